# fusepipe: the pipeline DAG. Logic lives in src/fusepipe; every rule calls `python -m fusepipe STAGE`.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


from fusepipe import config as fpconfig
from fusepipe.errors import ConfigError

try:  # typed validation first: one line per problem, naming the key path, the value and what is allowed
    CFG = fpconfig.load_dict(config, "config")
except ConfigError as err:
    sys.exit(f"error: {err}")
validate(config, "config/schema.yaml")  # the same schema as JSON schema: fills defaults into `config`

PY = sys.executable  # the interpreter running Snakemake, not whatever `python` is first on PATH
W = CFG.workdir


include: "workflow/rules/common.smk"
include: "workflow/rules/toy_world.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/fuse.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.data.output,
        TOY_OUTPUTS,
        rules.vote.output if CFG.reward_models else [],
        logits_targets(),
        align_targets(),
        train_targets(),
        merge_targets(),
        eval_targets(),
        paths.report_file(W),
    default_target: True


onsuccess:
    shell(f"{PY} -m fusepipe summary --workdir {W}")
    if Path(paths.report_file(W, "summary.txt")).is_file():
        print(f"\nResults (Δ against the pivot), full report: {paths.report_file(W)}")
        print(Path(paths.report_file(W, "summary.txt")).read_text())

# fusepipe: the pipeline DAG. Logic lives in src/fusepipe; every rule calls `python -m fusepipe STAGE`.
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


from fusepipe import cluster as fpcluster
from fusepipe import pipeline as fppipeline
from fusepipe.errors import ConfigError

try:  # typed validation first: one line per problem, naming the key path, the value and what is allowed
    CFG = fppipeline.load_dict(config, "config")
except ConfigError as err:
    sys.exit(f"error: {err}")
validate(config, "config/schema.yaml")  # the same schema as JSON schema: fills defaults into `config`

# Rules run `$FUSEPIPE_PYTHON -m fusepipe ...`: the interpreter running Snakemake (not whatever `python` is first on
# PATH), or with `--sdm conda` the rule's environment's python, which finds this checkout's src/ on PYTHONPATH.
PY = fpcluster.job_python(DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method, workflow.basedir)
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
include: "workflow/rules/ablations.smk"


rule all:
    input:
        rules.data.output,
        TOY_WORLD,
        rules.vote.output if CFG.reward_models else [],
        logits_targets(),
        align_targets(),
        train_targets(),
        merge_targets(),
        eval_targets(),
        paths.report_file(W),
    default_target: True


rule ablations:
    """The papers' ablation grids on this world (`ablations:` in the config): report/ablations.{md,html}."""
    input:
        rules.report_ablations.output,


onsuccess:
    shell(f"{PY} -m fusepipe summary --workdir {W}")
    if "ablations" in workflow.dag_settings.targets and Path(paths.report_file(W, "ablations.md")).is_file():
        print(f"\nAblation grids, full report: {paths.report_file(W, 'ablations.html')}")
        print(Path(paths.report_file(W, "ablations.md")).read_text())
    elif Path(paths.report_file(W, "summary.txt")).is_file():
        print(f"\nResults (the headline; Δ against the pivot and SFT), full report: {paths.report_file(W)}")
        print(Path(paths.report_file(W, "summary.txt")).read_text())

# Helpers shared by the rules: config slices and code versions as params (so a stage reruns when its settings
# or its code change, and only then), and which model/data paths are files Snakemake should track.
from pathlib import Path

from fusepipe import paths
from fusepipe.artifacts import code_version, shard_manifest
from fusepipe.toy.world import output_paths as toy_output_paths

# Shared modules that shape outputs; config.py/cli.py only parse and dispatch (the slice param covers config).
SHARED_CODE = ("schemas", "artifacts", "chat", "models")
TOY_OUTPUTS = [str(p) for p in toy_output_paths(f"{W}/toy").values()] if CFG.toy.enabled else []


def stage_params(stage, target=None):
    return fpconfig.slice_json(CFG, stage, target)


def stage_code(*modules):
    return code_version(*SHARED_CODE, *modules)


def local_inputs(*paths):
    """Paths Snakemake can track: existing files/folders and what the toy world builds (hub ids are not)."""
    return [p for p in paths if p in TOY_OUTPUTS or Path(p).exists()]

"""Where every artifact lives under the workdir: one place for the CLI, the stages and the Snakemake rules
(rules call these with wildcard placeholders such as "{model}")."""

from __future__ import annotations

from pathlib import Path


def shard_name(shard: int | str) -> str:
    return f"shard-{shard:05d}.parquet" if isinstance(shard, int) else f"shard-{shard}.parquet"


def data(workdir: str | Path, split: str = "train") -> str:
    return f"{workdir}/data/{split}.parquet"


def gen_shard(workdir: str | Path, model: str, shard: int | str) -> str:
    return f"{workdir}/gen/{model}/{shard_name(shard)}"


def reward_shard(workdir: str | Path, rm: str, shard: int | str) -> str:
    return f"{workdir}/reward/{rm}/{shard_name(shard)}"


def vote_choices(workdir: str | Path) -> str:
    return f"{workdir}/vote/choices.parquet"


def shard_of(sample_id: str, shards: int) -> int:
    """The shard a prompt belongs to: a stable function of its id, so adding data never moves other prompts."""
    return int(sample_id[:8], 16) % shards


def logits_shard(workdir: str | Path, mode: str, model: str, shard: int | str) -> str:
    return f"{workdir}/logits/{mode}/{model}/{shard_name(shard)}"


def pair(pivot: str, source: str) -> str:
    """A (pivot, source) pair's folder name: `pivot~source`."""
    return f"{pivot}~{source}"


def align_dir(workdir: str | Path, pivot: str, source: str, variant: str | None = None) -> str:
    """A pair's align folder; `variant` (e.g. `vocab-mined`: a recipe's own alignment settings) a subfolder."""
    base = f"{workdir}/align/{pair(pivot, source)}"
    return f"{base}/{variant}" if variant else base


def align_links(workdir: str | Path, pivot: str, source: str, mode: str, shard: int | str,
                variant: str | None = None) -> str:
    """One shard's token links and mapping counts (`.npz`, input of the vocabulary map and the projection); a
    `variant` only where it has its own links (its `method` differs)."""
    name = f"{shard:05d}" if isinstance(shard, int) else shard
    return f"{align_dir(workdir, pivot, source, variant)}/{mode}/links-{name}.npz"


def align_shard(workdir: str | Path, pivot: str, source: str, mode: str, shard: int | str,
                variant: str | None = None) -> str:
    return f"{align_dir(workdir, pivot, source, variant)}/{mode}/{shard_name(shard)}"


def align_counts(workdir: str | Path, pivot: str, source: str, variant: str | None = None) -> str:
    return f"{align_dir(workdir, pivot, source, variant)}/ms_counts.npz"


def align_vocab(workdir: str | Path, pivot: str, source: str, variant: str | None = None) -> str:
    return f"{align_dir(workdir, pivot, source, variant)}/vocab_map.parquet"


def align_coverage(workdir: str | Path, pivot: str, source: str, variant: str | None = None) -> str:
    return f"{align_dir(workdir, pivot, source, variant)}/coverage.json"


def targets_shard(workdir: str | Path, recipe: str, target: str, shard: int | str) -> str:
    return f"{workdir}/targets/{recipe}/{target}/{shard_name(shard)}"


def train_dir(workdir: str | Path, recipe: str, target: str) -> str:
    return f"{workdir}/train/{recipe}/{target}"


def train_model(workdir: str | Path, recipe: str, target: str) -> str:
    """The consolidated Hugging Face folder of a trained target (the train rule's declared output)."""
    return f"{train_dir(workdir, recipe, target)}/model"


def merge_model(workdir: str | Path, recipe: str, method: str) -> str:
    return f"{workdir}/merge/{recipe}/{method}/model"


def eval_suite(workdir: str | Path, model: str, suite: str) -> str:
    """One model's results on one suite (model: an evaluation id, `config.eval_models`)."""
    return f"{workdir}/eval/{model}/{suite}.json"


def eval_results(workdir: str | Path, model: str) -> str:
    return f"{workdir}/eval/{model}/results.json"


def report_file(workdir: str | Path, name: str = "index.html") -> str:
    return f"{workdir}/report/{name}"


def ablation_file(workdir: str | Path, name: str) -> str:
    """A measurement of an ablation grid beyond per-model evaluations (the tokenizer grid's efficiency)."""
    return f"{workdir}/ablations/{name}"

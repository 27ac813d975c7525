# Token alignment of every source onto the pivot (FuseChat §2.3): per (pair, mode, shard) links, per pair the
# mapping statistics and vocabulary map, per (pair, mode, shard) the projection, per pair coverage.json.
PIVOT = CFG.pivot.name
SOURCE_NAMES = [m.name for m in CFG.sources]
LOGITS_SHARD_IDS = list(range(CFG.logits.shards))


def align_inputs(wc):
    """What the links step reads: the source's logits shard, and the pivot side (its gt logits, or in mode inf
    the voted responses, tokenized with the pivot's tokenizer)."""
    out = {"source": paths.logits_shard(W, wc.mode, wc.source, wc.shard),
           "tokenizers": local_inputs(CFG.pivot.path, CFG.model(wc.source).path)}
    if wc.mode == "gt":
        out["pivot"] = paths.logits_shard(W, "gt", PIVOT, wc.shard)
    else:
        out["data"] = paths.data(W)
        out["vote"] = paths.vote_choices(W)
        out["gen"] = [paths.gen_shard(W, wc.source, s) for s in SHARDS]
    return out


def align_targets():
    return [paths.align_coverage(W, PIVOT, s) for s in SOURCE_NAMES]


rule align_links:
    """DTW (or band / offsets) links between the source's and the pivot's target tokens of one shard."""
    input:
        unpack(align_inputs),
    output:
        paths.align_links(W, PIVOT, "{source}", "{mode}", "{shard}"),
    params:
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths", "logits", "generate"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        mode="gt|inf",
        shard=r"\d{5}",
    threads: 1
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{mode}}/links-{{shard}}.log",
    shell:
        "{PY} -m fusepipe align --step links --config-json {params.cfg:q} --workdir {W} --target {wildcards.source}"
        " --mode {wildcards.mode} --shard {wildcards.shard} 2>&1 | tee {log}"


rule align_vocab:
    """Mapping statistics over every shard and mode of the pair, and the vocabulary map."""
    input:
        links=lambda wc: [paths.align_links(W, PIVOT, wc.source, m, s)
                          for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        tokenizers=lambda wc: local_inputs(CFG.pivot.path, CFG.model(wc.source).path),
    output:
        counts=paths.align_counts(W, PIVOT, "{source}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}"),
    params:
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
    threads: 1
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/vocab.log",
    shell:
        "{PY} -m fusepipe align --step vocab --config-json {params.cfg:q} --workdir {W} --target {wildcards.source}"
        " 2>&1 | tee {log}"


rule align_project:
    """The source's top-k at every pivot target token of one shard, over pivot vocabulary ids."""
    input:
        links=paths.align_links(W, PIVOT, "{source}", "{mode}", "{shard}"),
        source=paths.logits_shard(W, "{mode}", "{source}", "{shard}"),
        counts=paths.align_counts(W, PIVOT, "{source}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}"),
    output:
        shard=paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}"),
        manifest=str(shard_manifest(paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}"))),
    params:
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths", "logits"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        mode="gt|inf",
        shard=r"\d{5}",
    threads: 1
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{mode}}/project-{{shard}}.log",
    shell:
        "{PY} -m fusepipe align --step project --config-json {params.cfg:q} --workdir {W} --target {wildcards.source}"
        " --mode {wildcards.mode} --shard {wildcards.shard} 2>&1 | tee {log}"


rule align_coverage:
    """coverage.json of the pair: link kinds, valid share, probability mass kept, per mode and overall."""
    input:
        shards=lambda wc: [paths.align_shard(W, PIVOT, wc.source, m, s)
                           for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        vocab=paths.align_vocab(W, PIVOT, "{source}"),
    output:
        paths.align_coverage(W, PIVOT, "{source}"),
    params:
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
    threads: 1
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/coverage.log",
    shell:
        "{PY} -m fusepipe align --step coverage --config-json {params.cfg:q} --workdir {W} --target {wildcards.source}"
        " 2>&1 | tee {log}"

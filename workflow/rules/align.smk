# Token alignment of every source onto the pivot (FuseChat §2.3): per (pair, mode, shard) links, per pair the
# mapping statistics and vocabulary map, per (pair, mode, shard) the projection, per pair coverage.json.
PIVOT = CFG.pivot.name
SOURCE_NAMES = [m.name for m in CFG.sources]
LOGITS_SHARD_IDS = list(range(CFG.logits.shards))


rule align_links:
    """DTW (or band / offsets) links between the source's and the pivot's target tokens of one shard."""
    input:
        unpack(align_inputs),
    output:
        paths.align_links(W, PIVOT, "{source}", "{mode}", "{shard}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths", "logits", "generate"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        mode="gt|inf",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{mode}}/links-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step links --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.source}"
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
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/vocab.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step vocab --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.source}"
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
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths", "logits"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        mode="gt|inf",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{mode}}/project-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step project --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.source}"
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
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("align", wc.source),
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/coverage.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step coverage --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.source}"
        " 2>&1 | tee {log}"


# Another vocabulary map for a pair (a recipe's `align_vocab`; the vocab ablation grid): the vocab, project and
# coverage steps again under align/{pivot}~{source}/vocab-{vocab}/, from the pair's own links (the DTW is shared).


import json


ALIGN_VOCABS = "ms|ms_reference|mined|em"


rule align_vocab_variant:
    """The pair's mapping statistics and vocabulary map by method {vocab}, from the pair's links."""
    input:
        links=lambda wc: [paths.align_links(W, PIVOT, wc.source, m, s)
                          for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        tokenizers=lambda wc: local_inputs(CFG.pivot.path, CFG.model(wc.source).path),
    output:
        counts=paths.align_counts(W, PIVOT, "{source}", "vocab-{vocab}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}", "vocab-{vocab}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        vocab=ALIGN_VOCABS,
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/vocab-{{vocab}}/vocab.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step vocab --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} 2>&1 | tee {log}"


rule align_project_variant:
    """One shard's source top-k over pivot ids through the vocabulary map {vocab}."""
    input:
        links=paths.align_links(W, PIVOT, "{source}", "{mode}", "{shard}"),
        source=paths.logits_shard(W, "{mode}", "{source}", "{shard}"),
        counts=paths.align_counts(W, PIVOT, "{source}", "vocab-{vocab}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}", "vocab-{vocab}"),
    output:
        shard=paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}", "vocab-{vocab}"),
        manifest=str(shard_manifest(paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}", "vocab-{vocab}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths", "logits"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        vocab=ALIGN_VOCABS,
        mode="gt|inf",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/vocab-{{vocab}}/{{mode}}/project-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step project --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} --mode {wildcards.mode} --shard {wildcards.shard} 2>&1 | tee {log}"


rule align_coverage_variant:
    """coverage.json of the pair under the vocabulary map {vocab}."""
    input:
        shards=lambda wc: [paths.align_shard(W, PIVOT, wc.source, m, s, f"vocab-{wc.vocab}")
                           for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        vocab=paths.align_vocab(W, PIVOT, "{source}", "vocab-{vocab}"),
    output:
        paths.align_coverage(W, PIVOT, "{source}", "vocab-{vocab}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        vocab=ALIGN_VOCABS,
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/vocab-{{vocab}}/coverage.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step coverage --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} 2>&1 | tee {log}"

# Token alignment of every source onto the pivot (FuseChat §2.3): per (pair, mode, shard) links, per pair the
# mapping statistics and vocabulary map, per (pair, mode, shard) the projection, per pair coverage.json.
PIVOT = CFG.pivot.name
SOURCE_NAMES = [m.name for m in CFG.aligned]  # the controls too: the tokenizer grid aligns them
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


# A recipe's own alignment settings (`recipes[].align` / `align_vocab`; the vocab and tokenizer ablation grids): the
# steps again under align/{pivot}~{source}/{variant}/, e.g. vocab-mined or method-band (fusepipe.params.align). Only a
# variant whose `method` differs runs the token links again; the others read the pair's own links.


from fusepipe.params.align import VARIANT_PATTERN


rule align_links_variant:
    """The token links of one shard by the variant's method (band / offsets / faithful)."""
    input:
        unpack(align_inputs),
    output:
        paths.align_links(W, PIVOT, "{source}", "{mode}", "{shard}", "{variant}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths", "logits", "generate"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        variant=r"(?:[a-z_]+-[a-z_]+\+)*method-[a-z_]+(?:\+[a-z_]+-[a-z_]+)*",
        mode="gt|inf",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{variant}}/{{mode}}/links-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step links --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} --mode {wildcards.mode} --shard {wildcards.shard} 2>&1 | tee {log}"


rule align_vocab_variant:
    """The pair's mapping statistics and vocabulary map under the variant's settings."""
    input:
        links=lambda wc: [variant_links(wc, m, s) for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        tokenizers=lambda wc: local_inputs(CFG.pivot.path, CFG.model(wc.source).path),
    output:
        counts=paths.align_counts(W, PIVOT, "{source}", "{variant}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}", "{variant}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        variant=VARIANT_PATTERN,
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{variant}}/vocab.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step vocab --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} 2>&1 | tee {log}"


rule align_project_variant:
    """One shard's source top-k over pivot ids under the variant's settings."""
    input:
        links=lambda wc: variant_links(wc, wc.mode, wc.shard),
        source=paths.logits_shard(W, "{mode}", "{source}", "{shard}"),
        counts=paths.align_counts(W, PIVOT, "{source}", "{variant}"),
        vocab=paths.align_vocab(W, PIVOT, "{source}", "{variant}"),
    output:
        shard=paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}", "{variant}"),
        manifest=str(shard_manifest(paths.align_shard(W, PIVOT, "{source}", "{mode}", "{shard}", "{variant}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths", "logits"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        variant=VARIANT_PATTERN,
        mode="gt|inf",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{variant}}/{{mode}}/project-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step project --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} --mode {wildcards.mode} --shard {wildcards.shard} 2>&1 | tee {log}"


rule align_coverage_variant:
    """coverage.json of the pair under the variant's settings."""
    input:
        shards=lambda wc: [paths.align_shard(W, PIVOT, wc.source, m, s, wc.variant)
                           for m in CFG.align_modes(wc.source) for s in LOGITS_SHARD_IDS],
        vocab=paths.align_vocab(W, PIVOT, "{source}", "{variant}"),
    output:
        paths.align_coverage(W, PIVOT, "{source}", "{variant}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=align_variant_params,
        code=stage_code("align", "paths"),
    wildcard_constraints:
        source="|".join(SOURCE_NAMES) or "none",
        variant=VARIANT_PATTERN,
    threads: fpcluster.rule_threads(CFG, 'align')
    resources:
        **fpcluster.rule_resources(CFG, 'align'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/align/{PIVOT}~{{source}}/{{variant}}/coverage.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe align --step coverage --config-json {params.cfg:q} --workdir {params.workdir}"
        " --target {wildcards.source} 2>&1 | tee {log}"

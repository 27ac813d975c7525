rule data:
    """Ingest, clean and split the conversation mixture into train/eval Parquet."""
    input:
        local_inputs(*[s.path for s in CFG.data.sources], CFG.pivot.path),
    output:
        train=f"{W}/data/train.parquet",
        eval=f"{W}/data/eval.parquet",
        manifest=f"{W}/data/_manifest.json",
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("data"),  # a function: braces in a chat template are not wildcards
        code=stage_code("data"),
    threads: fpcluster.rule_threads(CFG, 'data')
    resources:
        **fpcluster.rule_resources(CFG, 'data'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/data.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe data --config-json {params.cfg:q} --out {params.workdir}/data 2>&1 | tee {log}"

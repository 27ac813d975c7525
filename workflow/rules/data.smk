rule data:
    """Ingest, clean and split the conversation mixture into train/eval Parquet."""
    input:
        local_inputs(*[s.path for s in CFG.data.sources], CFG.pivot.path),
    output:
        train=f"{W}/data/train.parquet",
        eval=f"{W}/data/eval.parquet",
        manifest=f"{W}/data/_manifest.json",
    params:
        cfg=stage_params("data"),
        code=stage_code("data"),
    log:
        f"{W}/logs/data.log",
    shell:
        "{PY} -m fusepipe data --config-json {params.cfg:q} --out {W}/data 2>&1 | tee {log}"

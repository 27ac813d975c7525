# The run's report: every model's results with deltas, plots, and the headline table printed at the end.


rule report:
    """report/index.html, summary.txt and results.csv from every model's evaluation and the stage manifests."""
    input:
        results=eval_targets(),
        trained=train_targets(),
        merged=merge_targets(),
    output:
        html=report(paths.report_file(W), category="fusepipe", caption="../report_caption.rst"),
        summary=paths.report_file(W, "summary.txt"),
        csv=paths.report_file(W, "results.csv"),
    params:
        cfg=json.dumps({"pivot": CFG.pivot.name, "models": list(EVAL_MODELS)}),
        code=stage_code("report"),
    threads: 1
    shell:
        "{PY} -m fusepipe report --config-json {params.cfg:q} --workdir {W}"

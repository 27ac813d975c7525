# The run's report: the headline table (accuracy ±95 % interval per domain, mean, Δ vs pivot and SFT; printed at
# the end), then every model's results with deltas, and plots.


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
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=json.dumps({"pivot": CFG.pivot.name, "models": list(EVAL_MODELS)}),
        code=stage_code("report"),
    threads: fpcluster.rule_threads(CFG, 'report')
    resources:
        **fpcluster.rule_resources(CFG, 'report'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/report.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe report --config-json {params.cfg:q} --workdir {params.workdir} 2>&1 | tee {log}"

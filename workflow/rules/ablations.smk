# The ablation grids (`snakemake ablations`; fusepipe.ablations, docs/evaluate.md): every grid value's model goes
# through the fuse/train/merge/evaluate rules by name; report/ablations.{md,html} holds one table per grid.
ABLATION_PARAMS = fpablations.report_params(CFG, ABL)
ABLATION_RESULTS = [paths.eval_results(W, m) for m in dict.fromkeys([CFG.pivot.name, *ABL.models])]
ABLATION_COVERAGE = list(dict.fromkeys(p for g in ABLATION_PARAMS["grids"] for v in g["variants"]
                                       for p in v.get("coverage", [])))


rule report_ablations:
    """report/ablations.md and .html: per grid, each value's toy exact match and RM scores, Δ vs the reference."""
    input:
        results=ABLATION_RESULTS,
        coverage=ABLATION_COVERAGE,
    output:
        html=paths.report_file(W, "ablations.html"),
        md=paths.report_file(W, "ablations.md"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=json.dumps(ABLATION_PARAMS, sort_keys=True),
        code=stage_code("report", "ablations"),
    threads: fpcluster.rule_threads(CFG, 'report')
    resources:
        **fpcluster.rule_resources(CFG, 'report'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/report/ablations.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe ablations --config-json {params.cfg:q} --workdir {params.workdir} 2>&1 | tee {log}"

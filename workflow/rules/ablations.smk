# The ablation grids (`snakemake ablations`; fusepipe.ablations, docs/evaluate.md): every grid value's model goes
# through the fuse/train/merge/evaluate rules by name; report/ablations.{md,html} holds one table per grid.
ABLATION_PARAMS = fpablations.report_params(CFG, ABL)
ABLATION_RESULTS = [paths.eval_results(W, m) for m in fpablations.report_models(ABLATION_PARAMS)]
ABLATION_COVERAGE = list(dict.fromkeys(p for g in ABLATION_PARAMS["grids"] for v in g["variants"]
                                       for p in v.get("coverage", [])))
ABLATION_EFFICIENCY = [ABLATION_PARAMS["tokenizer"]["file"]] if "tokenizer" in ABLATION_PARAMS else []


if ABLATION_EFFICIENCY:
    EFFICIENCY_PARAMS = fpablations.efficiency_params(CFG)

    rule ablation_efficiency:
        """The tokenizer grid's alignment efficiency: every target's KL to the control, gains over SFT, ratios."""
        input:
            models=[s["path"] for s in EFFICIENCY_PARAMS["students"].values()],
            teacher=EFFICIENCY_PARAMS["teacher_shards"],
            data=paths.data(W, "train"),
        output:
            ABLATION_EFFICIENCY[0],
        params:
            workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
            cfg=json.dumps(EFFICIENCY_PARAMS, sort_keys=True),
            code=stage_code("evaluate", "ablations"),
        threads: fpcluster.rule_threads(CFG, 'evaluate')
        resources:
            **fpcluster.rule_resources(CFG, 'evaluate'),
        conda:
            "../../envs/cpu.yaml"
        log:
            f"{W}/logs/ablations/efficiency.log",
        shell:
            "$FUSEPIPE_PYTHON -m fusepipe efficiency --config-json {params.cfg:q} --workdir {params.workdir} 2>&1 | tee {log}"


rule report_ablations:
    """report/ablations.md and .html: per grid, each value's toy exact match and RM scores, Δ vs the reference."""
    input:
        results=ABLATION_RESULTS,
        coverage=ABLATION_COVERAGE,
        efficiency=ABLATION_EFFICIENCY,
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

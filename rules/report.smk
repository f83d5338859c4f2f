# The evaluation report over every activated pipeline (results/report/), and the description page
# of Snakemake's own report (`snakemake --report results/report.zip`).


report: "../workflow/report/workflow.rst"


# The PNGs each pipeline registers as final outputs (MRNet's per-task ROC, RSNA's EDA) appear in its section.
REPORT_PLOTS = {p: [str(f) for f in FINAL_OUTPUTS[p] if str(f).endswith(".png")] for p in FINAL_METRICS}


rule report:
    input:
        metrics=list(FINAL_METRICS.values()),
        plots=[f for files in REPORT_PLOTS.values() for f in files],
        predictions=list(FINAL_PREDICTIONS.values()),
        store=ancient(MLFLOW_STORE),
    output:
        html=report(f"{RESULTS}/report/report.html", category="Summary"),
        md=f"{RESULTS}/report/summary.md",
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/medflow.yaml"
    params:
        pipelines=list(FINAL_METRICS),
        plots=REPORT_PLOTS,
        predictions={p: str(f) for p, f in FINAL_PREDICTIONS.items()},
        config=config,
        mlflow_ui=config["report"]["mlflow_ui"],
    script:
        "../workflow/scripts/report.py"


FINAL_OUTPUTS["report"] = rules.report.output

# The evaluation report over every activated pipeline (results/report/), and the description page
# of Snakemake's own report (`snakemake --report results/report.zip`).


report: "../workflow/report/workflow.rst"


rule report:
    input:
        metrics=list(FINAL_METRICS.values()),
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
        config=config,
        mlflow_ui=config["report"]["mlflow_ui"],
    script:
        "../workflow/scripts/report.py"


FINAL_OUTPUTS["report"] = rules.report.output

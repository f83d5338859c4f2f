from medflow import report, tracking
from medflow.jobs import start

log = start(snakemake)
files = dict(zip(snakemake.params.pipelines, snakemake.input.metrics))
report.write_report(
    files,
    snakemake.output.html,
    snakemake.output.md,
    config=snakemake.params.config,
    commit=tracking.git_commit(),
    tracking_uri=tracking.current_uri(),
    mlflow_ui=snakemake.params.mlflow_ui,
    plots=snakemake.params.plots,
    predictions=snakemake.params.predictions,
)
log.info("report for %s written to %s", ", ".join(files), snakemake.output.html)

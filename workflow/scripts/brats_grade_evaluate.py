from medflow.grade.evaluate import evaluate
from medflow.jobs import start

log = start(snakemake)
out = snakemake.output
evaluate(
    snakemake.input.slices,
    snakemake.input.split,
    snakemake.input.checkpoint,
    metrics_path=out.metrics,
    patients_path=out.patients,
    slices_out_path=out.slices,
    roc_path=out.roc,
    confusion_path=out.confusion,
    aggregate_rule=snakemake.params.aggregate,
    threshold=snakemake.params.evaluate["threshold"],
    batch_size=snakemake.params.evaluate["batch_size"],
    threads=snakemake.threads,
    rule=snakemake.rule,
)

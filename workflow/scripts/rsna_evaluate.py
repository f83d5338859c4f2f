from medflow.jobs import start
from medflow.rsna.evaluate import evaluate

log = start(snakemake)
evaluate(
    snakemake.input.h5,
    snakemake.input.split,
    dict(zip(snakemake.params.variants, snakemake.input.checkpoints)),
    snakemake.output.metrics,
    snakemake.output.roc,
    snakemake.output.predictions,
    threshold=snakemake.params.evaluate["threshold"],
    batch_size=snakemake.params.evaluate["batch_size"],
    threads=snakemake.threads,
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)

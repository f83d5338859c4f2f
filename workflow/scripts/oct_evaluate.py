from medflow.jobs import start
from medflow.oct.evaluate import evaluate

log = start(snakemake)
out = snakemake.output
evaluate(
    snakemake.params.root,
    snakemake.input.split,
    snakemake.input.checkpoint,
    out.metrics,
    out.predictions,
    out.confusion,
    top_k=snakemake.params.evaluate["top_k"],
    batch_size=snakemake.params.evaluate["batch_size"],
    threads=snakemake.threads,
    rule=snakemake.rule,
)

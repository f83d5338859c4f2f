from medflow.jobs import start
from medflow.rsna.train import train

log = start(snakemake)
result = train(
    snakemake.input.h5,
    snakemake.input.split,
    snakemake.wildcards.variant,
    snakemake.output.checkpoint,
    snakemake.output.curves,
    snakemake.params.train,
    threads=snakemake.threads,
    seed=snakemake.params.seed,
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)
log.info("best val AUC %.4f at epoch %d", result.best_score, result.best_epoch)

from medflow.jobs import start
from medflow.oct.train import train

log = start(snakemake)
result = train(
    snakemake.params.root,
    snakemake.input.split,
    snakemake.output.checkpoint,
    snakemake.output.curves,
    snakemake.params.train,
    threads=snakemake.threads,
    seed=snakemake.params.seed,
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)
log.info("best %s %.4f at epoch %d", snakemake.params.train["monitor"], result.best_score, result.best_epoch)

from medflow.grade.train import train
from medflow.jobs import start

log = start(snakemake)
result = train(
    snakemake.input.slices,
    snakemake.output.checkpoint,
    snakemake.output.curves,
    snakemake.params.train,
    aggregate_rule=snakemake.params.aggregate,
    threads=snakemake.threads,
    seed=snakemake.params.seed,
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)
log.info("best %s %.4f at epoch %d", snakemake.params.train["monitor"], result.best_score, result.best_epoch)

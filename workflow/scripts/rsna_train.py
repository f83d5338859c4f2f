from medflow.jobs import start
from medflow.params import from_config
from medflow.rsna.train import TrainParams, train
from medflow.train import Job

log = start(snakemake)
params = from_config(TrainParams, {"variant": snakemake.wildcards.variant, "train": snakemake.params.train})
result = train(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("best val AUC %.4f at epoch %d", result.best_score, result.best_epoch)

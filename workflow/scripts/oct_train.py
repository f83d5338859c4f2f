from medflow.jobs import start
from medflow.oct.train import TrainParams, train
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
params = from_config(TrainParams, {"root": snakemake.params.root, "train": snakemake.params.train})
result = train(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("best %s %.4f at epoch %d", params.train.monitor, result.best_score, result.best_epoch)

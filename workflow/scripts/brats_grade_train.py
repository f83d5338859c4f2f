from medflow.grade.train import TrainParams, train
from medflow.jobs import start
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
params = from_config(TrainParams, {"train": snakemake.params.train, "aggregate": snakemake.params.aggregate})
result = train(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("best %s %.4f at epoch %d", params.train.monitor, result.best_score, result.best_epoch)

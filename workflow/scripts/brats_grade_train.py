from medflow.grade.train import TrainParams, train
from medflow.jobs import start
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
p = snakemake.params
params = from_config(TrainParams, {"train": p.train, "aggregate": p.aggregate, "stack": p.stack_preprocessing})
result = train(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("best %s %.4f at epoch %d", params.train.monitor, result.best_score, result.best_epoch)

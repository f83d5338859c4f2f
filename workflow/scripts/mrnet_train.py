from medflow.jobs import start
from medflow.mrnet.train import TrainParams, train
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
# One job per task x plane x fold (the wildcards) on the raw folder, with config mrnet.train.
wc, p = snakemake.wildcards, snakemake.params
params = from_config(
    TrainParams, {"task": wc.task, "plane": wc.plane, "fold": wc.fold, "root": p.root, "train": p.train}
)
result = train(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("best monitor score %.4f at epoch %d", result.best_score, result.best_epoch)

from medflow.jobs import start
from medflow.params import from_config
from medflow.segmentation.evaluate import EvalParams, evaluate
from medflow.train import Job

log = start(snakemake)
params = from_config(EvalParams, {**snakemake.params.evaluate, "bootstrap": snakemake.params.bootstrap})
evaluate(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))

from medflow.jobs import start
from medflow.mrnet.evaluate import EvaluateParams, evaluate
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
p = snakemake.params
blocks = {"planes": p.planes, "folds": p.folds, "evaluate": p.evaluate, "bootstrap": p.bootstrap}
params = from_config(EvaluateParams, {"task": snakemake.wildcards.task, "root": p.root, "cams": p.cams, **blocks})
evaluate(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))

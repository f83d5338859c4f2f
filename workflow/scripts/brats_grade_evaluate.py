from medflow.grade.evaluate import EvaluateParams, evaluate
from medflow.jobs import start
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
p = snakemake.params
params = from_config(
    EvaluateParams, {"aggregate": p.aggregate, "evaluate": p.evaluate, "bootstrap": p.bootstrap, "cams": p.cams}
)
evaluate(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))

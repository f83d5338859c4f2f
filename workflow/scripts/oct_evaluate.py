from medflow.jobs import start
from medflow.oct.evaluate import EvaluateParams, evaluate
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
params = from_config(
    EvaluateParams,
    {
        "root": snakemake.params.root,
        "evaluate": snakemake.params.evaluate,
        "bootstrap": snakemake.params.bootstrap,
        "cams": snakemake.params.cams,
    },
)
metrics = evaluate(dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("headline: %s", ", ".join(f"{k} {v['value']:.4f}" for k, v in metrics["headline"].items()))

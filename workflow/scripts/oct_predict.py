from medflow.jobs import start
from medflow.oct.predict import PredictParams, predict_scans
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
evaluate = snakemake.params.evaluate
params = from_config(
    PredictParams,
    {
        "folder": snakemake.params.folder,
        "top_k": evaluate["top_k"],
        "batch_size": evaluate["batch_size"],
        "cams": snakemake.params.cams,
    },
)
out = predict_scans(
    dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake)
)
log.info("class mix %s, %d files excluded", out["summary"]["class_mix"], out["summary"]["n_excluded"])

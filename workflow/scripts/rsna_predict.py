from medflow.jobs import start
from medflow.params import from_config
from medflow.rsna.predict import PredictParams, predict_folder
from medflow.train import Job

log = start(snakemake)
params = from_config(PredictParams, snakemake.params.predict)
summary = predict_folder(
    dict(snakemake.input.items()), dict(snakemake.output.items()), params, Job.from_snakemake(snakemake)
)
log.info("predicted %d images, excluded %d: %s", summary["n_predicted"], summary["n_excluded"], summary["class_mix"])

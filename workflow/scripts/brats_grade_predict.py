from medflow.grade.predict import PredictParams, predict_new
from medflow.jobs import start
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
p = snakemake.params
params = from_config(
    PredictParams, {"aggregate": p.aggregate, "threshold": p.threshold, "batch_size": p.batch_size, "cams": p.cams}
)
inputs = {
    "stacks": list(snakemake.input.stacks),
    "segmentations": list(snakemake.input.segmentations),
    "checkpoint": snakemake.input.checkpoint,
    "segmentation_checkpoint": snakemake.input.segmentation_checkpoint,
}
predict_new(inputs, dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))

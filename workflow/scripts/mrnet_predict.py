from medflow.jobs import start
from medflow.mrnet.predict import PredictParams, predict_new_exams
from medflow.params import from_config
from medflow.train import Job

log = start(snakemake)
# The nine plane checkpoints (task by task) and three stackers of predict.mrnet.models, on predict.mrnet.input.
p = snakemake.params
params = from_config(
    PredictParams,
    {
        "input": str(snakemake.input.exams),
        "models": p.models,
        "cams": p.cams,
        "batch_slices": p.batch_slices,
        "tasks": p.tasks,
        "planes": p.planes,
    },
)
inputs = {"checkpoints": list(snakemake.input.checkpoints), "stackers": list(snakemake.input.stackers)}
out = predict_new_exams(inputs, dict(snakemake.output.items()), params, Job.from_snakemake(snakemake))
log.info("MRNet predictions: %s", out["summary"])

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a job that shares its cores
# with other jobs is not slowed several-fold by spinning threads (docs/brats_segmentation.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medflow.jobs import start
from medflow.segmentation.data import by_case
from medflow.segmentation.evaluation import EvalParams, evaluate_unet3d
from medflow.train import select_device

log = start(snakemake)
evaluate_unet3d(
    snakemake.input.checkpoint,
    by_case(snakemake.input.stacks),
    snakemake.input.split,
    metrics_json=snakemake.output.metrics,
    per_case_csv=snakemake.output.per_case,
    predictions_dir=snakemake.output.predictions,
    overlays_dir=snakemake.output.overlays,
    params=EvalParams(**snakemake.params.evaluate, threshold=snakemake.params.threshold),
    device=select_device(snakemake.threads),
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)

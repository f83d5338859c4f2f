import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a job that shares its cores
# with other jobs is not slowed several-fold by spinning threads (docs/brats_segmentation.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medflow.jobs import start
from medflow.segmentation.data import by_case
from medflow.segmentation.training import UNetParams, train_unet3d

log = start(snakemake)
train_unet3d(
    by_case(snakemake.input.patches),
    snakemake.input.split,
    snakemake.output.checkpoint,
    params=UNetParams(**snakemake.params.unet3d),
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    bf16=snakemake.params.bf16,
    curves=snakemake.output.curves,
    rule=snakemake.rule,
)

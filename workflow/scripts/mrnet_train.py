import os

# Set before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a shared or busy
# CPU, spinning threads fight for cores and a 2-thread job ran 5x slower than with this (docs/mrnet.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medflow.jobs import start  # noqa: E402
from medflow.mrnet.train import Outputs, train_plane  # noqa: E402

log = start(snakemake)
wc, out = snakemake.wildcards, snakemake.output
train_plane(
    snakemake.input.manifest,
    snakemake.input.folds,
    snakemake.params.root,
    task=wc.task,
    plane=wc.plane,
    fold=wc.fold,
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    bf16=snakemake.params.bf16,
    outputs=Outputs(out.checkpoint, out.predictions, out.summary, out.curves),
)

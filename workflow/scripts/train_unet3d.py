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

from medflow.jobs import start
from medflow.segmentation.data import by_case
from medflow.segmentation.train import UNetParams, train_unet3d

log = start(snakemake)
train_unet3d(
    by_case(snakemake.input.patches),
    snakemake.input.split,
    snakemake.output.checkpoint,
    params=UNetParams(**snakemake.params.train),
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    bf16=snakemake.params.bf16,
    curves=snakemake.output.curves,
    rule=snakemake.rule,
)

from medflow.jobs import start
from medflow.mrnet.train import Outputs, train_plane

log = start(snakemake)
wc, out = snakemake.wildcards, snakemake.output
train_plane(
    snakemake.input.manifest,
    snakemake.input.folds,
    snakemake.params.root,
    task=wc.task,
    plane=wc.plane,
    fold=wc.fold,
    model_cfg=snakemake.params.train["model"],
    train_cfg=snakemake.params.train,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    bf16=snakemake.params.bf16,
    outputs=Outputs(out.checkpoint, out.predictions, out.summary, out.curves),
)

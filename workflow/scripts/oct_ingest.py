from medflow.ingest.oct import ingest
from medflow.jobs import start

log = start(snakemake)
cfg = snakemake.params.ingest
ingest(
    snakemake.input[0],
    snakemake.output.manifest,
    snakemake.output.split,
    val_source=cfg["val_source"],
    val_fraction=cfg["val_fraction"],
    check_pixels=cfg["check_pixels"],
    seed=snakemake.params.seed,
)

from pathlib import Path

from medflow.ingest.mrnet import ingest
from medflow.jobs import start

log = start(snakemake)
# The inputs are the six label CSVs, which lie in the MRNet-v1.0 folder itself.
manifest = ingest(
    Path(snakemake.input[0]).parent,
    snakemake.output.manifest,
    snakemake.output.folds,
    k=snakemake.params.ingest["folds"],
    seed=snakemake.params.seed,
)
log.info("MRNet manifest: %d exams", len(manifest))

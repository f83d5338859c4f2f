from pathlib import Path

from medflow.ingest.rsna import ingest
from medflow.jobs import start

log = start(snakemake)
raw = Path(snakemake.input.labels).parent  # the download's root folder
ingest(raw, snakemake.output.manifest, snakemake.output.split, snakemake.params.ingest["split"], snakemake.params.seed)

from pathlib import Path

from medflow.jobs import start
from medflow.synthetic.rsna import write_dataset

log = start(snakemake)
counts = write_dataset(Path(snakemake.output.images).parent, snakemake.params.cfg, snakemake.params.seed)
log.info("synthetic RSNA download: %s", counts)

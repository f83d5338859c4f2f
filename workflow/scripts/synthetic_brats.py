from pathlib import Path

from medflow.jobs import start
from medflow.synthetic.brats import generate

log = start(snakemake)
cases = generate(snakemake.params.cfg, Path(snakemake.output.mapping).parent, snakemake.params.seed)
log.info("synthetic BraTS download: %d cases", len(cases))

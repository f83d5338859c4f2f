from pathlib import Path

from medflow.jobs import start
from medflow.synthetic.mrnet import generate

log = start(snakemake)
# The label CSVs lie in the MRNet-v1.0 folder itself.
counts = generate(snakemake.params.cfg, Path(snakemake.output.labels[0]).parent, snakemake.params.seed)
log.info("synthetic MRNet download: %s exams", counts)

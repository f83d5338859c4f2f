from medflow.jobs import start
from medflow.synthetic.brats import generate

log = start(snakemake)
cases = generate(snakemake.params.cfg, snakemake.params.raw, snakemake.params.seed)
log.info("synthetic BraTS download: %d cases in %s", len(cases), snakemake.params.raw)

from medflow.jobs import start
from medflow.synthetic.brats import generate_predict

log = start(snakemake)
cases = generate_predict(snakemake.params.cfg, snakemake.params.out, snakemake.params.seed)
log.info("synthetic BraTS validation download (no seg): %d cases in %s", len(cases), snakemake.params.out)

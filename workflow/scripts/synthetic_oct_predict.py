from medflow.jobs import start
from medflow.synthetic.oct import generate_predict

log = start(snakemake)
counts = generate_predict(snakemake.output.root, snakemake.params.cfg, snakemake.params.seed)
log.info("synthetic unlabeled OCT scans: %s", counts)

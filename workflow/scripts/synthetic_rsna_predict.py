from medflow.jobs import start
from medflow.synthetic.rsna import write_predict_set

log = start(snakemake)
counts = write_predict_set(snakemake.output.images, snakemake.params.cfg, snakemake.params.seed)
log.info("synthetic RSNA test images: %s", counts)

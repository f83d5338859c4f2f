from medflow.jobs import start
from medflow.synthetic.oct import generate

log = start(snakemake)
counts = generate(snakemake.output.root, snakemake.params.cfg, snakemake.params.seed)
log.info("synthetic OCT2017 download: images per split %s", counts)

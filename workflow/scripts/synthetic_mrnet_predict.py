from medflow.jobs import start
from medflow.synthetic.mrnet import generate_new

log = start(snakemake)
n = generate_new(snakemake.params.cfg, snakemake.output[0], snakemake.params.seed)
log.info("synthetic new MRNet exams (unlabeled): %d in %s", n, snakemake.output[0])

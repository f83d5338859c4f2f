from medflow.jobs import start
from medflow.preprocess.trim import write_trim

log = start(snakemake)
write_trim(
    snakemake.wildcards.case, snakemake.input.images, snakemake.input.seg, snakemake.params.margin, snakemake.output[0]
)

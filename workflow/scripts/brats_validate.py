from medflow.ingest import releases
from medflow.ingest.brats import write_validation
from medflow.jobs import start

log = start(snakemake)
write_validation(
    snakemake.params.raw, snakemake.wildcards.case, snakemake.output[0], release=releases.get(snakemake.params.release)
)

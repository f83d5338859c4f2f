from medflow.jobs import start
from medflow.rsna.metadata import write_table

log = start(snakemake)
write_table(
    snakemake.input.manifest,
    snakemake.output.table,
    snakemake.output.decisions,
    max_age_years=snakemake.params.max_age_years,
    max_excluded_fraction=snakemake.params.max_excluded_fraction,
    threads=snakemake.threads,
)

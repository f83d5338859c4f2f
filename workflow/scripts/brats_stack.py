from medflow.ingest import releases
from medflow.jobs import start
from medflow.preprocess.stack import stack_from_records

log = start(snakemake)
stack_from_records(
    snakemake.wildcards.case,
    list(snakemake.input.images),  # brats_n4 outputs, in modality order
    snakemake.input.seg,
    snakemake.input.valid,
    snakemake.input.trim,
    snakemake.output[0],
    snakemake.params.stack,
    releases.get(snakemake.params.release),
)

from medflow.ingest import releases
from medflow.jobs import start
from medflow.preprocess import case

log = start(snakemake)
case.prepare_case(
    snakemake.params.raw,
    snakemake.wildcards.case,
    releases.get(snakemake.params.release),
    dict(snakemake.input.items()),
    {k: snakemake.output[k] for k in ("valid", "trim", "stack", "patches")},
    {k: snakemake.params[k] for k in ("n4", "margin", "stack", "patches", "seed")},
    snakemake.threads,
)

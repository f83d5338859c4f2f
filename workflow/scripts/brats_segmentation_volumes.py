from medflow.jobs import start
from medflow.segmentation.predict import collect_volumes
from medflow.train import Job

log = start(snakemake)
collect_volumes(
    dict(snakemake.input.items()),
    dict(snakemake.output.items()),
    n_overlays=snakemake.params.n_overlays,
    job=Job.from_snakemake(snakemake),
)

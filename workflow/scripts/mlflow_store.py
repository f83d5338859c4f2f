from medflow import io, tracking
from medflow.jobs import start

log = start(snakemake)
uri = tracking.current_uri()
ids = tracking.create_store(uri, snakemake.params.experiments)
log.info("MLflow store ready at %s with experiments %s", uri, ids)
io.write_json(snakemake.output[0], {"tracking_uri": uri, "experiments": ids})

from medflow import io
from medflow.ingest import releases
from medflow.ingest.brats import validate_case
from medflow.jobs import start

log = start(snakemake)
info = validate_case(snakemake.params.raw, snakemake.wildcards.case, release=releases.get(snakemake.params.release))
info.pop("files")  # full paths stay out of derived files; source_files keeps the public names
io.write_json(snakemake.output[0], info)
log.info("%s: valid, shape (X, Y, Z) %s, spacing %s mm", info["case_id"], info["shape_xyz"], info["spacing_xyz"])

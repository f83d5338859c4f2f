from medflow import io
from medflow.jobs import start
from medflow.preprocess.trim import trim_range

log = start(snakemake)
result = trim_range(list(snakemake.input.images), snakemake.params.margin, label_path=snakemake.input.seg)
io.write_json(snakemake.output[0], result)
log.info("%s: kept slices %s of %d", snakemake.wildcards.case, result["kept_z_range"], result["n_slices"])

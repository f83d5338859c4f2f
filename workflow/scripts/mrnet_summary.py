from medflow.jobs import start
from medflow.mrnet.evaluate import summarise

log = start(snakemake)
table = summarise(dict(zip(snakemake.params.tasks, snakemake.input, strict=True)), dict(snakemake.output.items()))
log.info("MRNet valid AUC per task:\n%s", table.to_string(index=False))

from medflow.jobs import start
from medflow.mrnet.evaluation import summarise

log = start(snakemake)
table = summarise(dict(zip(snakemake.params.tasks, snakemake.input, strict=True)), snakemake.output[0])
log.info("MRNet valid AUC per task:\n%s", table.to_string(index=False))

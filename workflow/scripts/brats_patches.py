from medflow.jobs import start
from medflow.preprocess.patches import PatchParams, sample_case

log = start(snakemake)
sample_case(snakemake.input[0], snakemake.output[0], PatchParams.from_config(snakemake.params.patches), snakemake.params.seed)

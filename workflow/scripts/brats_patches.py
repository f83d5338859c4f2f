from medflow.jobs import start
from medflow.params import from_config
from medflow.preprocess.patches import PatchParams, sample_case

log = start(snakemake)
sample_case(
    snakemake.input[0], snakemake.output[0], from_config(PatchParams, snakemake.params.patches), snakemake.params.seed
)

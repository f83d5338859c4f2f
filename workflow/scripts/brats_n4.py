from medflow.jobs import start
from medflow.params import from_config
from medflow.preprocess.n4 import MODALITIES, N4Params, correct_case

log = start(snakemake)
params = from_config(N4Params, snakemake.params.n4)
# Per case: inputs and outputs both in modality order flair, t1, t1ce, t2; per modality: one of each.
modalities = [snakemake.wildcards.modality] if "modality" in snakemake.wildcards.keys() else MODALITIES
inputs = list(snakemake.input.images) if not isinstance(snakemake.input.images, str) else [snakemake.input.images]
correct_case(dict(zip(modalities, inputs)), dict(zip(modalities, snakemake.output)), params, snakemake.threads)

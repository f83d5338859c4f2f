from medflow import io
from medflow.ingest import releases
from medflow.jobs import start
from medflow.params import from_config
from medflow.preprocess.stack import MODALITIES, StackParams, stack_case

log = start(snakemake)
valid = io.read_json(snakemake.input.valid)
trim = io.read_json(snakemake.input.trim)
stack_case(
    snakemake.wildcards.case,
    dict(zip(MODALITIES, snakemake.input.images)),  # brats_n4 outputs, in modality order
    snakemake.input.seg,
    trim["kept_z_range"],
    snakemake.output[0],
    from_config(StackParams, snakemake.params.stack),
    affine=valid["affine"],
    source_files=[valid["source_files"][k] for k in (*MODALITIES, "seg")],
    release=releases.get(snakemake.params.release),
)

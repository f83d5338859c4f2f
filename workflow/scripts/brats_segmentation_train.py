from medflow.jobs import start
from medflow.params import from_config
from medflow.segmentation.predict import preprocessing_record
from medflow.segmentation.train import UNetParams, train
from medflow.train import Job

log = start(snakemake)
train(
    dict(snakemake.input.items()),
    dict(snakemake.output.items()),
    from_config(UNetParams, snakemake.params.train),
    Job.from_snakemake(snakemake),
    # Recorded in the checkpoint: what prediction on new cases applies (and checks).
    preprocessing=preprocessing_record(**snakemake.params.preprocessing),
)

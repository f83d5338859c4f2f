from medflow.ingest import releases
from medflow.jobs import start
from medflow.params import from_config
from medflow.segmentation.predict import PredictParams, predict_new_case, preprocessing_record
from medflow.train import Job

log = start(snakemake)
predict_new_case(
    snakemake.params.input,
    snakemake.wildcards.case,
    dict(snakemake.output.items()),
    checkpoint=snakemake.input.checkpoint,
    params=from_config(PredictParams, snakemake.params.inference),
    preprocessing=preprocessing_record(**snakemake.params.preprocessing),
    release=releases.get(snakemake.params.release),
    job=Job.from_snakemake(snakemake),
)

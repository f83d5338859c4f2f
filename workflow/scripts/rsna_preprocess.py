import pandas as pd

from medflow import io
from medflow.jobs import start
from medflow.rsna.metadata import read_table
from medflow.rsna.preprocess import PreprocessConfig, write_hdf5

log = start(snakemake)
summary = write_hdf5(
    read_table(snakemake.input.table),
    pd.read_csv(snakemake.input.manifest, dtype={"patientId": str}),
    snakemake.output.h5,
    PreprocessConfig.from_params(snakemake.params.preprocess),
    threads=snakemake.threads,
    max_age_years=snakemake.params.max_age_years,
)
io.write_json(snakemake.output.summary, summary)

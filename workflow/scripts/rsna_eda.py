from pathlib import Path

import pandas as pd

from medflow.jobs import start
from medflow.rsna.eda import write_plots
from medflow.rsna.metadata import read_table

log = start(snakemake)
paths = write_plots(
    read_table(snakemake.input.table),
    pd.read_csv(snakemake.input.manifest, dtype={"patientId": str}),
    Path(snakemake.output[0]).parent,
)
log.info("wrote %d plots", len(paths))

"""medflow: the library behind the medflow Snakemake workflow; importable and testable without Snakemake."""

import os

__version__ = "0.1.0"

# Set here, the one place, before any medflow module imports torch (OpenMP reads it once, at load):
# idle OpenMP threads sleep instead of spinning. Spinning threads steal the cores of the jobs beside
# them (6-7x slower training measured on 2 shared cores); passive waiting costs nothing when a job
# has its cores to itself. Importing medflow in the Snakefile sets it for every job it starts too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

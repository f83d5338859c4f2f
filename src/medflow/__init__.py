"""medflow: the library behind the medflow Snakemake workflow; importable and testable without Snakemake."""

__version__ = "0.1.0"

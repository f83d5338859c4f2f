"""Run Snakemake itself on the tiny config, once per test session, in a scratch directory."""

from pathlib import Path

import pytest

from tests.workflow.smk import run_snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole workflow on the tiny config; returns its working directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    run_snakemake(workdir)
    return workdir

"""Workflow tests: everything that starts Snakemake (runs it, dry-runs it or loads the workflow through
its API) lives in this directory, and every test here carries the `workflow` marker, so
`-m "not workflow"` leaves exactly these out."""

from pathlib import Path

import pytest

from tests.workflow.smk import run_snakemake

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # Called with the whole session's items: mark only this directory's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.workflow)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole workflow on the tiny config; returns its working directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    run_snakemake(workdir)
    return workdir


# Small enough for a real-data-mode RSNA run in a test, with both classes in every split.
RSNA_TINY = {"n_patients": 24, "size": 48, "missing_age_fraction": 0.0, "missing_spacing_fraction": 0.0}


@pytest.fixture(scope="session")
def rsna_raw(tmp_path_factory) -> Path:
    """A 24-patient synthetic RSNA download (read-only: copy it before changing anything)."""
    # Imported here: a pipeline mid-change breaks only the tests that use it, not collection.
    from medflow.synthetic.rsna import write_dataset

    root = tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge"
    write_dataset(root, RSNA_TINY, seed=2)  # a seed whose 7 positives include several-box patients
    return root

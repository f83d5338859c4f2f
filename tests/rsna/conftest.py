"""Fixtures of the RSNA tests: a tiny synthetic download, written once per session."""

from pathlib import Path

import pytest
import torch

from medflow.synthetic.rsna import write_dataset

torch.set_num_threads(1)  # the test machine is shared

TINY = {"n_patients": 24, "size": 48, "missing_age_fraction": 0.0, "missing_spacing_fraction": 0.0}


@pytest.fixture(scope="session")
def rsna_raw(tmp_path_factory) -> Path:
    """A 24-patient synthetic RSNA download (read-only: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge"
    write_dataset(root, TINY, seed=2)  # a seed whose 7 positives include several-box patients
    return root

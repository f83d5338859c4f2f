"""Fixtures of the RSNA tests: a tiny synthetic download, its preprocessing HDF5 and both trained variants."""

from pathlib import Path

import pytest
import torch

from medflow.synthetic.rsna import write_dataset

torch.set_num_threads(1)  # the test machine is shared

TINY = {"n_patients": 24, "size": 48, "missing_age_fraction": 0.0, "missing_spacing_fraction": 0.0}
# Config rsna.train, small: two short epochs of a two-block CNN.
TRAIN = {
    "backbone": "simple",
    "weights": "none",
    "channels": [4, 8],
    "meta_hidden": 4,
    "dropout": 0.1,
    "epochs": 2,
    "patience": 0,
    "batch_size": 8,
    "lr": 0.01,
    "weight_decay": 0.0,
    "augment": {"translate": 0.05, "rotate_deg": 5, "scale": 0.05, "hflip": True},
}
VARIANTS = ("with_metadata", "image_only")


@pytest.fixture(scope="session")
def rsna_raw(tmp_path_factory) -> Path:
    """A 24-patient synthetic RSNA download (read-only: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge"
    write_dataset(root, TINY, seed=2)  # a seed whose 7 positives include several-box patients
    return root


@pytest.fixture(scope="session")
def prepared(rsna_raw, tmp_path_factory) -> Path:
    """Folder with manifest.csv, split.csv (12 train, 6 val, 6 test patients) and images.h5 (24 x 24 pixels)."""
    from medflow.ingest import rsna as ingest
    from medflow.rsna import metadata
    from medflow.rsna import preprocess as pp

    d = tmp_path_factory.mktemp("rsna_prepared")
    manifest = ingest.ingest(
        rsna_raw, d / "manifest.csv", d / "split.csv", {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0
    )
    table, _ = metadata.build_table(manifest)
    pp.write_hdf5(table, manifest, d / "images.h5", pp.PreprocessConfig(size=24))
    return d


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    """Both variants trained (seed 0), tracked in a scratch MLflow store: {"dir", "uri", "results", "checkpoints"}."""
    from medflow import tracking
    from medflow.params import from_config
    from medflow.rsna.train import TrainParams, train
    from medflow.train import Job

    d = tmp_path_factory.mktemp("rsna_trained")
    uri = f"sqlite:///{d}/mlflow.db"
    tracking.create_store(uri, ["rsna"])
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    results, checkpoints = {}, {}
    try:
        for variant in VARIANTS:
            checkpoints[variant] = d / variant / "model.pt"
            results[variant] = train(
                {"h5": prepared / "images.h5", "split": prepared / "split.csv"},
                {"checkpoint": checkpoints[variant], "curves": d / variant / "curves.png"},
                from_config(TrainParams, {"variant": variant, "train": TRAIN}),
                Job(threads=1, seed=0, rule="rsna_train"),
            )
    finally:
        mp.undo()
    return {"dir": d, "uri": uri, "results": results, "checkpoints": checkpoints}

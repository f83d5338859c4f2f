"""MRNet ingest: manifest and fold file from a valid download; one clear InputError per malformed input."""

import numpy as np
import pytest

from medflow.errors import InputError
from medflow.ingest import mrnet
from tests.ingest.problems import assert_reported

PLANES = ("axial", "coronal", "sagittal")
TASKS = ("abnormal", "acl", "meniscus")


def make_download(root, n_train=12, n_valid=4, size=256):
    """A small download in the public layout with zero images (ingest reads headers, not pixels)."""
    ids = {
        "train": [f"{i:04d}" for i in range(n_train)],
        "valid": [f"{i:04d}" for i in range(n_train, n_train + n_valid)],
    }
    for split, exams in ids.items():
        for plane in PLANES:
            (root / split / plane).mkdir(parents=True)
            for k, e in enumerate(exams):
                np.save(root / split / plane / f"{e}.npy", np.zeros((2 + k % 3, size, size), np.uint8))
        for task in TASKS:
            # abnormal: all but every 4th; acl: every 3rd abnormal; meniscus: every 2nd abnormal
            rows = []
            for k, e in enumerate(exams):
                ab = int(k % 4 != 0)
                y = ab if task == "abnormal" else int(ab and k % (3 if task == "acl" else 2) == 1)
                rows.append(f"{e},{y}\n")
            (root / f"{split}-{task}.csv").write_text("".join(rows))
    return ids


@pytest.fixture
def download(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    return root, make_download(root)


def test_manifest_and_folds(download, tmp_path):
    root, ids = download
    man = mrnet.ingest(root, tmp_path / "manifest.csv", tmp_path / "folds.csv", k=3, seed=0)
    assert len(man) == 16
    back = mrnet.read_manifest(tmp_path / "manifest.csv")
    assert back["id"].tolist() == ids["train"] + ids["valid"]
    assert back.loc[back["id"] == "0004", "slices_coronal"].item() == 2 + 4 % 3
    assert set(back.columns) >= {"split", *TASKS, "slices_axial", "slices_coronal", "slices_sagittal"}
    folds = mrnet.read_folds(tmp_path / "folds.csv")
    train = folds[folds["split"] == "train"]
    assert set(train["fold"]) == {"0", "1", "2"} and train["fold"].value_counts().tolist() == [4, 4, 4]
    assert (folds.loc[folds["split"] == "valid", "fold"] == "valid").all()
    # Stratified by the label combination: the 3 normal train exams land in 3 different folds.
    normal = back.loc[(back["split"] == "train") & (back["abnormal"] == 0), "id"]
    assert train.set_index("id").loc[normal, "fold"].nunique() == 3
    # Deterministic.
    mrnet.ingest(root, tmp_path / "m2.csv", tmp_path / "f2.csv", k=3, seed=0)
    assert (tmp_path / "f2.csv").read_text() == (tmp_path / "folds.csv").read_text()


def test_fold_models_never_predict_their_training_exams(download, tmp_path):
    root, ids = download
    mrnet.ingest(root, tmp_path / "m.csv", tmp_path / "f.csv", k=3, seed=1)
    folds = mrnet.read_folds(tmp_path / "f.csv")
    heldout = []
    for f in ("0", "1", "2"):
        train, predict = mrnet.fold_ids(folds, f)
        assert set(predict) == {"heldout"}
        assert not set(train) & set(predict["heldout"]), "an exam is predicted by a model that trained on it"
        assert set(train) | set(predict["heldout"]) == set(ids["train"])
        heldout += predict["heldout"]
    assert sorted(heldout) == ids["train"], "every train exam is predicted out of fold exactly once"
    train, predict = mrnet.fold_ids(folds, "all")
    assert train == ids["train"] and predict["valid"] == ids["valid"] and predict["in_sample"] == ids["train"]
    with pytest.raises(ValueError, match="fold 7"):
        mrnet.fold_ids(folds, "7")


def _ingest(root, tmp_path):
    return mrnet.ingest(root, tmp_path / "m.csv", tmp_path / "f.csv", k=2, seed=0)


@pytest.mark.parametrize(
    "breakage, culprit, message",
    [
        (lambda r: (r / "train/coronal/0003.npy").unlink(), "train/coronal/0003.npy", "has no coronal series"),
        (
            lambda r: np.save(r / "train/axial/0002.npy", np.zeros((3, 256, 256), np.int16)),
            "train/axial/0002.npy",
            "dtype int16",
        ),
        (
            lambda r: np.save(r / "valid/sagittal/0013.npy", np.zeros((256, 256), np.uint8)),
            "valid/sagittal/0013.npy",
            "2 dimensions",
        ),
        (
            lambda r: np.save(r / "train/axial/0005.npy", np.zeros((3, 256, 128), np.uint8)),
            "train/axial/0005.npy",
            "256x128",
        ),
        (lambda r: (r / "train/axial/0001.npy").write_bytes(b"not an array"), "train/axial/0001.npy", "unreadable"),
        (
            lambda r: (r / "train/axial/0001.npy").write_bytes((r / "train/axial/0001.npy").read_bytes()[:300]),
            "train/axial/0001.npy",
            "unreadable",
        ),
        (
            lambda r: np.save(r / "train/axial/0001.npy", np.array([{"a": 1}], dtype=object)),
            "train/axial/0001.npy",
            "unreadable",
        ),
        (lambda r: _drop_line(r / "train-acl.csv", "0006"), "train-acl.csv", "no row for exam 0006"),
        (
            lambda r: np.save(r / "train/sagittal/0099.npy", np.zeros((3, 256, 256), np.uint8)),
            "train-abnormal.csv",
            "no row for exam 0099",
        ),
        (lambda r: _replace(r / "valid-meniscus.csv", "0014,0", "0014,2"), "valid-meniscus.csv", "label '2'"),
        (lambda r: _replace(r / "train-abnormal.csv", "0002,1", "0002;1"), "train-abnormal.csv", "line 3"),
        (lambda r: (r / "valid-acl.csv").unlink(), "valid-acl.csv", "missing label file"),
        (lambda r: __import__("shutil").rmtree(r / "valid/axial"), "valid/axial", "missing axial folder"),
    ],
)
def test_malformed_input_names_the_file(download, tmp_path, breakage, culprit, message):
    root, _ = download
    breakage(root)
    with pytest.raises(InputError) as err:
        _ingest(root, tmp_path)
    assert err.value.path == str(root / culprit)
    assert message in err.value.problem
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "f.csv").exists(), "nothing half-written"


def test_exam_in_both_splits_is_rejected(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    make_download(root)
    for task in TASKS:  # valid exam 0012 renamed to a train id
        _replace(root / f"valid-{task}.csv", "0012,", "0000,")
    for plane in PLANES:
        (root / "valid" / plane / "0012.npy").rename(root / "valid" / plane / "0000.npy")
    with pytest.raises(InputError, match="exam 0000 is also in train"):
        _ingest(root, tmp_path)


def _drop_line(path, exam):
    path.write_text("".join(ln + "\n" for ln in path.read_text().splitlines() if not ln.startswith(exam + ",")))


def _replace(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_every_bad_input_is_reported_in_one_run(download, tmp_path):
    root, _ = download
    np.save(root / "train/axial/0002.npy", np.zeros((3, 256, 256), np.float32))
    (root / "train/coronal/0003.npy").unlink()
    _replace(root / "valid-meniscus.csv", "0014,0", "0014,2")
    with pytest.raises(InputError) as err:
        _ingest(root, tmp_path)
    assert_reported(
        err.value,
        [
            (root / "train/axial/0002.npy", "dtype float32, expected uint8"),
            (root / "train/coronal/0003.npy", "has no coronal series"),
            (root / "valid-meniscus.csv", "line 3: label '2' is not 0 or 1"),
        ],
    )
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "f.csv").exists(), "nothing written"


def test_a_broken_csv_or_folder_is_one_problem_not_one_per_exam(download, tmp_path):
    """Checks that need a broken file are skipped: a missing CSV does not make every exam 'unlisted'."""
    root, _ = download
    (root / "valid-acl.csv").unlink()
    __import__("shutil").rmtree(root / "valid/axial")
    _drop_line(root / "train-acl.csv", "0006")
    _drop_line(root / "train-acl.csv", "0007")
    with pytest.raises(InputError) as err:
        _ingest(root, tmp_path)
    assert_reported(
        err.value,
        [
            (root / "train-acl.csv", "no row for exam 0006 (listed in train-abnormal.csv)"),
            (root / "train-acl.csv", "no row for exam 0007"),
            (root / "valid-acl.csv", "missing label file"),
            (root / "valid/axial", "missing axial folder"),
        ],
    )


def test_wrong_dtype_and_wrong_shape_of_one_array_are_two_problems(tmp_path):
    p = tmp_path / "0000.npy"
    np.save(p, np.zeros((3, 256, 128), np.float64))
    with pytest.raises(InputError) as err:
        mrnet.check_npy(p)
    assert_reported(err.value, [(p, "dtype float64"), (p, "slices of 256x128")])

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


# --- new exams to predict: a folder or a CSV of paths -------------------------------------------------


def _series(path, slices=3, size=256, dtype=np.uint8, ndim=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (slices, size, size)[-ndim:] if ndim <= 3 else (slices, size, size, 1)
    np.save(path, np.zeros(shape, dtype))
    return path


def _exam(folder, exam, slices=(3, 4, 5), skip=()):
    for plane, s in zip(PLANES, slices):
        if plane not in skip:
            _series(folder / plane / f"{exam}.npy", s)


def test_new_exams_from_a_folder_keep_the_good_and_exclude_the_bad_with_the_file_named(tmp_path):
    new = tmp_path / "new_exams"
    _exam(new, "1250")
    _exam(new, "knee_B-2.left")  # any safe id, not only digits
    _exam(new, "1251", skip=("coronal",))
    _exam(new, "1252")
    _series(new / "sagittal" / "1252.npy", ndim=2)  # (256, 256): no slice axis
    _exam(new, "1253")
    _series(new / "axial" / "1253.npy", dtype=np.float32)
    (new / "axial" / "1254.npy").write_bytes(b"not an array")
    (new / "axial" / "._1250.npy").write_bytes(b"macOS resource fork")  # hidden: skipped
    (new / "axial" / "notes.txt").write_text("ignored")
    got = mrnet.discover_new(new)
    assert got.order == ["1250", "1251", "1252", "1253", "1254", "knee_B-2.left"]
    assert got.exams["id"].tolist() == ["1250", "knee_B-2.left"]
    assert got.exams.loc[0, ["slices_axial", "slices_coronal", "slices_sagittal"]].tolist() == [3, 4, 5]
    assert got.exams.loc[1, "path_coronal"] == str(new / "coronal" / "knee_B-2.left.npy")
    reasons = dict(zip(got.excluded["exam"], got.excluded["reason"]))
    assert list(reasons) == ["1251", "1252", "1253", "1254"]
    assert reasons["1251"] == f"{new / 'coronal' / '1251.npy'}: missing"
    assert reasons["1252"].startswith(f"{new / 'sagittal' / '1252.npy'}: 2 dimensions (256, 256)")
    assert reasons["1253"] == f"{new / 'axial' / '1253.npy'}: dtype float32, expected uint8"
    assert reasons["1254"].startswith(f"{new / 'axial' / '1254.npy'}: unreadable as a .npy array")
    assert "missing" in reasons["1254"] and str(new / "coronal" / "1254.npy") in reasons["1254"]


def test_the_in_plane_size_the_models_were_trained_on_is_checked(tmp_path):
    _exam(tmp_path, "0001")
    _series(tmp_path / "coronal" / "0001.npy", size=320)
    _exam(tmp_path, "0002")
    got = mrnet.discover_new(tmp_path, in_plane=256)
    assert got.exams["id"].tolist() == ["0002"]
    assert got.excluded["reason"].item() == f"{tmp_path / 'coronal' / '0001.npy'}: slices of 320x320, expected 256x256"


def test_new_exams_from_a_csv_with_header(tmp_path):
    data = tmp_path / "data"
    _exam(data / "a", "e1")
    _exam(data / "b", "e2")
    _exam(data / "c", "e3")
    csv = data / "exams.csv"
    # Columns in any order; relative paths from the CSV's folder, or absolute ones inside it; an empty cell is
    # a missing plane.
    csv.write_text(
        "sagittal,exam,axial,coronal\n"
        "b/sagittal/e2.npy,second,b/axial/e2.npy,b/coronal/e2.npy\n"
        f"{data / 'a/sagittal/e1.npy'},first,a/axial/e1.npy,./a/coronal/e1.npy\n"
        "c/sagittal/e3.npy,third,c/axial/e3.npy,\n"
        "\n"
    )
    got = mrnet.discover_new(csv)
    assert got.order == ["second", "first", "third"]
    assert got.exams["id"].tolist() == ["second", "first"]
    assert got.exams.loc[1, "path_coronal"] == str(data / "a" / "coronal" / "e1.npy")
    assert got.exams.loc[0, "slices_sagittal"] == 5
    assert got.excluded.to_dict("records") == [{"exam": "third", "reason": f"{csv}: line 4: no coronal path"}]


def test_the_challenge_paths_csv_three_lines_per_exam(tmp_path):
    """``valid-paths.csv`` of the MRNet challenge: no header, one path per line, the planes in any order
    within an exam's three lines (implementations differ), paths relative to the folder it lies in."""
    for exam in ("1130", "1131"):
        _exam(tmp_path / "MRNet-v1.0" / "valid", exam)
    csv = tmp_path / "valid-paths.csv"
    lines = [f"MRNet-v1.0/valid/{p}/{e}.npy" for e in ("1131", "1130") for p in ("sagittal", "coronal", "axial")]
    csv.write_text("\n".join(lines) + "\n")
    got = mrnet.discover_new(csv)
    assert got.order == ["1131", "1130"] and got.exams["id"].tolist() == ["1131", "1130"]
    assert got.exams.loc[0, "path_axial"] == str(tmp_path / "MRNet-v1.0/valid/axial/1131.npy")
    assert got.exams.loc[1, "slices_coronal"] == 4 and got.excluded.empty


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("exam,axial,coronal,sagittal\n../../x,a.npy,b.npy,c.npy\n", "line 2: exam id '../../x' cannot name an output"),
        ("exam,axial,coronal,sagittal\n.hidden,a.npy,b.npy,c.npy\n", "line 2: exam id '.hidden' cannot name"),
        ("exam,axial,coronal,sagittal\ne1,../a.npy,b.npy,c.npy\n", "line 2: path '../a.npy' lies outside the CSV's"),
        ("exam,axial,coronal,sagittal\ne1,sub/../../a.npy,b.npy,c.npy\n", "path 'sub/../../a.npy' lies outside"),
        ("exam,axial,coronal,sagittal\ne1,/etc/a.npy,b.npy,c.npy\n", "line 2: path '/etc/a.npy' lies outside"),
        ("exam,axial,coronal,sagittal\ne1,a.npy,b.npy,c.npy\ne1,d.npy,e.npy,f.npy\n", "line 3: exam e1 listed twice"),
        ("exam,axial,coronal,sagittal\ne1,a.npy,b.npy\n", "line 2: 3 fields, expected 4"),
        ("exam,axial,coronal,sagittal\n", "a header but no exams"),
        ("id,path\n1,a.npy\n", "line 1: expected the header exam,axial,coronal,sagittal or the challenge's"),
        ("v/axial/1.npy\nv/coronal/1.npy\n", "2 paths: expected three lines per exam"),
        ("v/axial/1.npy\nv/coronal/1.npy\nv/coronal/1.npy\n", "lines 1-3: expected one .npy series in each of"),
        ("v/axial/1.npy\nv/coronal/2.npy\nv/sagittal/1.npy\n", "lines 1-3: the three planes of one exam must share"),
        ("v/axial/../../1.npy\nv/coronal/1.npy\nv/sagittal/1.npy\n", "lines 1-3: expected one .npy series"),
        ("../axial/1.npy\n../coronal/1.npy\n../sagittal/1.npy\n", "lines 1-3: path '../axial/1.npy' lies outside"),
        ("", "no rows"),
    ],
)
def test_a_csv_with_an_unsafe_id_a_path_outside_or_a_bad_shape_is_refused(tmp_path, text, problem):
    csv = tmp_path / "exams.csv"
    csv.write_text(text)
    with pytest.raises(InputError) as err:
        mrnet.discover_new(csv)
    assert err.value.path == str(csv) and problem in err.value.problem, str(err.value)


def test_every_unsafe_id_of_a_csv_is_reported_together(tmp_path):
    csv = tmp_path / "exams.csv"
    csv.write_text("exam,axial,coronal,sagittal\na/b,a.npy,b.npy,c.npy\nok,a.npy,../b.npy,c.npy\n")
    with pytest.raises(InputError) as err:
        mrnet.discover_new(csv)
    assert_reported(err.value, [(csv, "line 2: exam id 'a/b'"), (csv, "line 3: path '../b.npy' lies outside")])


def test_a_folder_with_an_unsafe_file_name_is_refused(tmp_path):
    _exam(tmp_path, "0001")
    _exam(tmp_path, "knee 2")
    with pytest.raises(InputError) as err:
        mrnet.discover_new(tmp_path)
    assert err.value.path == str(tmp_path / "axial" / "knee 2.npy")
    assert err.value.problem.startswith("exam id 'knee 2' cannot name an output file")


def test_no_usable_exam_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="missing: expected a folder of") as err:
        mrnet.discover_new(tmp_path / "nowhere")
    assert err.value.path == str(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no axial, coronal or sagittal folder"):
        mrnet.discover_new(tmp_path)
    for plane in PLANES:
        (tmp_path / plane).mkdir()
    with pytest.raises(InputError, match="no exams: no .npy series") as err:
        mrnet.discover_new(tmp_path)
    assert type(err.value) is InputError and err.value.path == str(tmp_path)
    _exam(tmp_path, "0001", skip=("sagittal",))
    _exam(tmp_path, "0002", skip=("axial",))
    with pytest.raises(InputError) as err:
        mrnet.discover_new(tmp_path)
    assert type(err.value) is InputError and err.value.path == str(tmp_path)
    assert err.value.problem == f"no usable exam (2 excluded: {tmp_path / 'sagittal' / '0001.npy'}: missing)"

"""RSNA ingest: manifest and patient split from a valid download; one clear InputError per malformed input."""

import json
import shutil

import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.ingest import rsna
from medflow.synthetic.rsna import write_dataset
from tests.ingest.problems import assert_reported

LABELS, CLASSES, IMAGES = rsna.LABELS, rsna.CLASSES, rsna.IMAGES
FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna") / "raw"
    write_dataset(root, {"n_patients": 16, "size": 32}, seed=4)
    return root


@pytest.fixture
def raw(pristine, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(pristine, root)
    return root


def _edit_csv(path, fn):
    df = pd.read_csv(path, dtype={"patientId": str})
    fn(df).to_csv(path, index=False)


def test_manifest_and_split(raw, tmp_path):
    df = rsna.ingest(raw, tmp_path / "manifest.csv", tmp_path / "split.csv", FRACTIONS, seed=1)
    labels = pd.read_csv(raw / LABELS)
    # One row per patient; boxes collapsed into a list per patient.
    assert len(df) == labels["patientId"].nunique() == 16
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype={"patientId": str})
    multi = manifest[manifest["n_boxes"] > 1].iloc[0]
    assert len(json.loads(multi["boxes"])) == (labels["patientId"] == multi["patientId"]).sum()
    assert set(manifest.columns) >= {"patientId", "dicom", "target", "n_boxes", "boxes", "class"}
    split = pd.read_csv(tmp_path / "split.csv", dtype={"patientId": str})
    assert sorted(split["patientId"]) == sorted(manifest["patientId"])
    # Stratified: both classes in every split.
    assert (split.groupby("split")["target"].nunique() == 2).all()
    assert split["split"].value_counts().to_dict() == {"train": 8, "val": 4, "test": 4}
    again = rsna.ingest(raw, tmp_path / "m2.csv", tmp_path / "s2.csv", FRACTIONS, seed=1)
    assert (tmp_path / "s2.csv").read_text() == (tmp_path / "split.csv").read_text() and len(again) == 16


def _first_id(raw, target=None):
    labels = pd.read_csv(raw / LABELS, dtype={"patientId": str})
    if target is not None:
        labels = labels[labels["Target"] == target]
    return labels["patientId"].iloc[0]


CASES = {
    "missing labels CSV": (lambda r: (r / LABELS).unlink(), LABELS, "missing"),
    "missing images folder": (lambda r: shutil.rmtree(r / IMAGES), IMAGES, "missing"),
    "missing column": (
        lambda r: _edit_csv(r / LABELS, lambda d: d.drop(columns=["Target"])),
        LABELS,
        "missing column(s) Target",
    ),
    "bad Target": (
        lambda r: _edit_csv(r / LABELS, lambda d: d.assign(Target=d["Target"].astype(str).replace({"0": "2"}))),
        LABELS,
        "Target must be 0 or 1",
    ),
    "positive without box": (
        lambda r: _edit_csv(r / LABELS, lambda d: d.assign(width=d["width"].where(d["Target"] == 0, None))),
        LABELS,
        "Target=1 needs a box",
    ),
    "unknown class": (
        lambda r: _edit_csv(r / CLASSES, lambda d: d.replace({"Normal": "Healthy"})),
        CLASSES,
        "unknown class 'Healthy'",
    ),
    "class contradicts Target": (
        lambda r: _edit_csv(r / CLASSES, lambda d: d.replace({"Normal": "Lung Opacity"})),
        CLASSES,
        "contradicts Target=0",
    ),
    "patient without class row": (
        lambda r: _edit_csv(r / CLASSES, lambda d: d.iloc[1:]),
        CLASSES,
        "no row for patientId",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_csv_or_layout_names_the_file(raw, tmp_path, case):
    break_it, name, problem = CASES[case]
    break_it(raw)
    with pytest.raises(InputError) as err:
        rsna.ingest(raw, tmp_path / "m.csv", tmp_path / "s.csv", FRACTIONS, seed=1)
    assert err.value.path.endswith(name) and problem in err.value.problem
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()


def test_missing_dicom_names_the_file(raw, tmp_path):
    pid = _first_id(raw)
    (raw / IMAGES / f"{pid}.dcm").unlink()
    with pytest.raises(InputError, match=rf"{pid}\.dcm: missing \(patientId listed in {LABELS}\)"):
        rsna.discover(raw)


def test_dicom_without_label_row_names_the_file(raw):
    shutil.copy(next((raw / IMAGES).glob("*.dcm")), raw / IMAGES / "00000000-0000-4000-8000-000000000000.dcm")
    with pytest.raises(InputError, match=r"00000000-0000-4000-8000-000000000000\.dcm: no row in stage_2_train_labels"):
        rsna.discover(raw)


def test_non_dicom_and_truncated_files_name_the_file(raw):
    pid = _first_id(raw)
    path = raw / IMAGES / f"{pid}.dcm"
    path.write_bytes(b"\x89PNG not a dicom at all")
    with pytest.raises(InputError, match=rf"{pid}\.dcm: not a DICOM file"):
        rsna.discover(raw)
    good = next(p for p in (raw / IMAGES).glob("*.dcm") if p != path).read_bytes()
    path.write_bytes(good[:200])
    with pytest.raises(InputError, match=rf"{pid}\.dcm: "):
        rsna.discover(raw)


def test_every_bad_input_is_reported_in_one_run(raw, tmp_path):
    classes = pd.read_csv(raw / CLASSES, dtype={"patientId": str})
    _edit_csv(raw / CLASSES, lambda d: d.assign(**{"class": d["class"].where(d.index != 4, "Healthy")}))
    pids = sorted(pd.read_csv(raw / LABELS, dtype={"patientId": str})["patientId"].unique())
    (raw / IMAGES / f"{pids[0]}.dcm").unlink()
    (raw / IMAGES / f"{pids[1]}.dcm").write_bytes(b"\x89PNG not a dicom at all")
    with pytest.raises(InputError) as err:
        rsna.ingest(raw, tmp_path / "m.csv", tmp_path / "s.csv", FRACTIONS, seed=1)
    expected = [
        (raw / CLASSES, "line 6: unknown class 'Healthy'"),
        (raw / IMAGES / f"{pids[0]}.dcm", f"missing (patientId listed in {LABELS})"),
        (raw / IMAGES / f"{pids[1]}.dcm", "not a DICOM file"),
    ]
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and lines[-1] == "3 problems in the input; nothing was written", lines
    for (path, words), e, line in zip(expected, err.value.errors, lines):
        assert e.path == str(path) and words in e.problem and line.startswith(f"{path}: "), line
    assert classes["patientId"].value_counts()[classes["patientId"].iloc[4]] == 1, "one patient, one row: one problem"
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()


def test_every_bad_line_of_a_csv_is_reported(raw):
    def break_two(d):
        d.loc[1, "Target"] = 2
        d.loc[3, "patientId"] = None
        return d

    _edit_csv(raw / LABELS, break_two)
    with pytest.raises(InputError) as err:
        rsna.read_labels(raw / LABELS)
    assert [e.problem.split(":")[0] for e in err.value.errors] == ["line 5", "line 3"]
    assert "Target must be 0 or 1, got '2'" in err.value.errors[1].problem


def test_an_unsafe_patient_id_is_refused_naming_the_csv_and_its_line(raw, tmp_path):
    """A patientId names per-patient outputs (CAM PNGs): one that would leave its folder never gets that far."""
    _edit_csv(raw / LABELS, lambda d: d.assign(patientId=d["patientId"].where(d.index != 2, "../../x")))
    with pytest.raises(InputError) as err:
        rsna.ingest(raw, tmp_path / "m.csv", tmp_path / "s.csv", FRACTIONS, seed=1)
    assert len(err.value.errors) == 1 and err.value.path == str(raw / LABELS)
    assert err.value.problem.startswith("line 4: patientId '../../x' cannot name an output file")
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()
    # in both CSVs (consistent with each other): one line each
    _edit_csv(raw / CLASSES, lambda d: d.assign(patientId=d["patientId"].where(d.index != 0, "..\\x")))
    with pytest.raises(InputError) as err:
        rsna.discover(raw)
    assert_reported(
        err.value,
        [
            (raw / LABELS, "line 4: patientId '../../x' cannot name an output file"),
            (raw / CLASSES, "line 2: patientId '..\\\\x' cannot name an output file"),
        ],
    )


def test_an_unsafe_dicom_file_name_is_refused(raw):
    path = next((raw / IMAGES).glob("*.dcm"))
    path.rename(raw / IMAGES / ".hidden.dcm")
    with pytest.raises(InputError) as err:
        rsna.discover(raw)
    lines = {e.path: e.problem for e in err.value.errors}
    assert "patientId (the file name) '.hidden' cannot name an output file" in lines[str(raw / IMAGES / ".hidden.dcm")]

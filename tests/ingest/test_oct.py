"""OCT2017 ingest: discovery, the manifest and split file, and one InputError naming the file for
each kind of bad input (unreadable image, missing class folder, name not matching the pattern, unsafe id); new
scans to predict on: any tree of JPEG/PNG files, each bad file excluded with its reason."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from medflow.errors import InputError
from medflow.ingest import oct as ing
from medflow.synthetic import oct as syn

SMALL = {
    "patients": {"train": 4, "val": 1, "test": 1},
    "images_per_patient": [1, 3],
    "height": [36, 48],
    "aspect": [1.0, 1.4],
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("oct") / "OCT2017"
    syn.generate(root, SMALL, seed=1)
    return root


@pytest.fixture
def root(pristine, tmp_path):
    dst = tmp_path / "OCT2017"
    shutil.copytree(pristine, dst)
    return dst


def a_file(root, split="train", cls="DME"):
    return sorted((root / split / cls).iterdir())[0]


def test_manifest_and_split_describe_every_image(pristine, tmp_path):
    split = ing.ingest(
        pristine, tmp_path / "manifest.csv", tmp_path / "split.csv", val_source="folder", val_fraction=0.1, seed=0
    )
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype={"patient": str})
    n_files = sum(1 for p in pristine.rglob("*.jpeg"))
    assert len(manifest) == len(split) == n_files
    assert list(manifest.columns) == ["id", "path", "folder", "label", "patient", "n", "width", "height", "mode"]
    row = manifest.iloc[0]
    assert (pristine / row["path"]).is_file() and row["path"].startswith(f"{row['folder']}/{row['label']}/")
    assert set(manifest["mode"]) == {"L"} and manifest["height"].between(36, 48).all()
    on_disk = pd.read_csv(tmp_path / "split.csv", dtype=str)
    assert list(on_disk.columns) == ["id", "split", "label", "patient", "path"]
    assert (on_disk["split"] == manifest["folder"]).all(), "val_source folder keeps the data set's folders"


def test_unreadable_image_names_the_file(root):
    bad = a_file(root)
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="unreadable image") as e:
        ing.discover(root)
    assert e.value.path == str(bad)


def test_truncated_jpeg_is_caught_when_pixels_are_checked(root):
    bad = a_file(root, "test", "CNV")
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(InputError) as e:
        ing.discover(root, check_pixels=True)
    assert e.value.path == str(bad) and "unreadable" in e.value.problem


def test_missing_class_folder_names_the_folder(root):
    shutil.rmtree(root / "val" / "DRUSEN")
    with pytest.raises(InputError, match="class folder missing") as e:
        ing.discover(root)
    assert e.value.path == str(root / "val" / "DRUSEN")


def test_empty_class_folder_is_an_error(root):
    for p in (root / "test" / "NORMAL").iterdir():
        p.unlink()
    with pytest.raises(InputError, match="no images"):
        ing.discover(root)


@pytest.mark.parametrize("name", ["DME_123-1.jpeg", "DME-123.jpeg", "scan.png", "DME-12a-1.jpeg"])
def test_file_name_not_matching_the_pattern_names_the_file(root, name):
    bad = root / "train" / "DME" / name
    shutil.copy(a_file(root), bad)
    with pytest.raises(InputError, match="does not match") as e:
        ing.discover(root)
    assert e.value.path == str(bad)


def test_class_in_name_must_match_its_folder(root):
    src = a_file(root, "train", "DME")
    bad = root / "train" / "CNV" / src.name
    shutil.move(src, bad)
    with pytest.raises(InputError, match="DME folder|in the CNV folder") as e:
        ing.discover(root)
    assert e.value.path == str(bad)


def test_hidden_files_are_ignored(root):
    (root / "train" / "CNV" / ".DS_Store").write_bytes(b"\0\1")
    df = ing.discover(root)
    assert not df["id"].str.startswith(".").any()


def test_missing_root_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="OCT2017 folder not found"):
        ing.discover(tmp_path / "nowhere")


def test_val_carved_from_train_by_patient(pristine):
    df = ing.discover(pristine)
    split = ing.assign(df, "train", 0.25, seed=3)
    assert set(split[df["folder"] == "val"]) == {"unused"}
    assert (split[df["folder"] == "test"] == "test").all()
    carved = df.assign(split=split)[df["folder"] == "train"]
    assert set(carved["split"]) == {"train", "val"}
    assert (carved.groupby("patient")["split"].nunique() == 1).all(), "no patient on both sides"
    val_labels = carved.loc[carved["split"] == "val", "label"]
    assert set(val_labels) == set(ing.CLASSES), "stratified: every class in val"
    assert split.equals(ing.assign(df, "train", 0.25, seed=3))


def test_carved_val_keeps_patients_whole_across_classes(pristine, tmp_path):
    """Patients with images in several class folders (as in the real set) land in one split. The
    patient is read from the file name here, not from the table, so class-specific ids cannot hide a leak."""
    df = ing.discover(pristine)
    pid = df["id"].str.split("-").str[1]
    train = df["folder"] == "train"
    assert (df[train].groupby(pid[train])["label"].nunique() > 1).sum() >= 2, "the fixture has multi-class patients"
    written = ing.ingest(pristine, tmp_path / "m.csv", tmp_path / "s.csv", val_source="train", val_fraction=0.4, seed=0)
    # several seeds: whether a class-specific id leaks depends on which patients are drawn
    for seed, split in enumerate([written["split"]] + [ing.assign(df, "train", 0.4, s) for s in range(1, 8)]):
        carved = split[train]
        assert set(carved) == {"train", "val"}
        assert (carved.groupby(pid[train]).nunique() == 1).all(), f"seed {seed}: a patient in train and val"
    assert not set(pid[train]) & set(pid[df["folder"] == "test"]), "test patients are not train patients"


@given(
    st.lists(
        st.tuples(st.sampled_from(ing.FOLDERS), st.integers(0, 11), st.sampled_from(ing.CLASSES)),
        min_size=1,
        max_size=60,
    ),
    st.floats(0.05, 0.95),
    st.integers(0, 1000),
)
def test_carving_maps_every_image_to_its_patients_split(images, val_fraction, seed):
    """For any images (folder, patient, class), patients spanning classes included: each train
    patient's images share one split (train or val), the val folder is unused, test stays test."""
    df = pd.DataFrame(
        [{"id": f"{c}-{p}-{n}", "folder": f, "label": c, "patient": str(p)} for n, (f, p, c) in enumerate(images)]
    )
    split = ing.assign(df, "train", val_fraction, seed)
    train = df["folder"] == "train"
    assert set(split[train]) <= {"train", "val"}
    assert (split[train].groupby(df.loc[train, "patient"]).nunique() == 1).all()
    assert (split[df["folder"] == "val"] == "unused").all() and (split[df["folder"] == "test"] == "test").all()


def test_patient_in_two_folders_is_reported_not_rejected(root, tmp_path, caplog):
    """The real download has patients with images in more than one folder: logged, not fatal."""
    src = a_file(root, "train", "CNV")
    cls, pid, _ = src.stem.split("-")
    shutil.copy(src, root / "test" / "CNV" / f"{cls}-{pid}-99.jpeg")
    with caplog.at_level(logging.WARNING):
        ing.ingest(root, tmp_path / "m.csv", tmp_path / "s.csv", val_source="folder", val_fraction=0.1, seed=0)
    assert "1 patients have images in more than one split" in caplog.text


def test_class_to_idx_is_imagefolder_order():
    assert ing.class_to_idx() == {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}


def test_every_bad_input_is_reported_in_one_run(root, tmp_path):
    unreadable = a_file(root, "train", "DME")
    unreadable.write_bytes(b"this is not a jpeg")
    misnamed = root / "test" / "NORMAL" / "scan.png"
    shutil.copy(a_file(root, "test", "NORMAL"), misnamed)
    shutil.rmtree(root / "val" / "DRUSEN")
    with pytest.raises(InputError) as e:
        ing.ingest(root, tmp_path / "m.csv", tmp_path / "s.csv", val_source="folder", val_fraction=0.1, seed=0)
    expected = [
        (unreadable, "unreadable image"),
        (root / "val" / "DRUSEN", "class folder missing"),
        (misnamed, "file name does not match"),
    ]
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and lines[-1] == "3 problems in the input; nothing was written", lines
    for (path, words), err, line in zip(expected, e.value.errors, lines):
        assert err.path == str(path) and words in err.problem and line.startswith(f"{path}: "), line
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()


def test_a_name_in_two_folders_is_one_problem_naming_both(root):
    src = a_file(root, "train", "CNV")
    shutil.copy(src, root / "test" / "CNV" / src.name)
    with pytest.raises(InputError, match="more than one folder") as e:
        ing.discover(root)
    assert e.value.path == str(src) and f"test/CNV/{src.name}" in e.value.problem


@pytest.mark.parametrize(
    ("name", "what"), [("CNV-\u0661\u0662\u0663-1.jpeg", "patient id"), ("CNV-123-1\u0662.jpeg", "image id")]
)
def test_a_name_that_cannot_name_an_output_file_is_refused_at_ingest(root, name, what):
    """The pattern's \\d matches non-ASCII digits: such a name passes it, but the image id names CAM files."""
    bad = root / "train" / "CNV" / name
    shutil.copy(a_file(root, "train", "CNV"), bad)
    with pytest.raises(InputError, match=f"{what} .* cannot name an output file") as e:
        ing.discover(root)
    assert e.value.path == str(bad)


# --- new scans to predict on ---------------------------------------------------------------------------------


@pytest.fixture
def new_scans(pristine, tmp_path):
    """A tree of new scans: JPEG and PNG, grey and RGB, two folders deep, and a hidden file and folder."""
    src = a_file(pristine, "test", "CNV")
    folder = tmp_path / "scans"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copy(src, folder / "one.jpeg")
    shutil.copy(src, folder / "a" / "b" / "two.JPG")
    with Image.open(src) as im:
        im.save(folder / "a" / "three.png")
        im.convert("RGB").save(folder / "a" / "b" / "four.png")
    (folder / ".DS_Store").write_bytes(b"\0")
    shutil.copy(src, folder / ".hidden" / "five.jpeg")
    return folder


def test_new_scans_are_found_in_the_whole_tree_with_path_ids(new_scans):
    scans, excluded = ing.discover_scans(new_scans)
    assert scans["path"].tolist() == ["a/b/four.png", "a/b/two.JPG", "a/three.png", "one.jpeg"]
    assert scans["id"].tolist() == ["a__b__four", "a__b__two", "a__three", "one"]
    assert scans["mode"].tolist() == ["RGB", "L", "L", "L"] and excluded.empty
    assert ing.scan_files(new_scans) == [str(new_scans / p) for p in scans["path"]]  # hidden ones left out


def test_bad_new_scans_are_excluded_with_a_reason_each(new_scans):
    src = new_scans / "one.jpeg"
    (new_scans / "a" / "readme.md").write_text("hello")
    (new_scans / "a" / "cut.jpeg").write_bytes(src.read_bytes()[:300])
    (new_scans / "a" / "fake.png").write_bytes(b"\x89PNG but not really")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(new_scans / "deep.png")  # 16-bit grey
    (new_scans / "Patient 1").mkdir()
    shutil.copy(src, new_scans / "Patient 1" / "x.jpeg")
    shutil.copy(src, new_scans / "a__three.jpeg")  # the id of a/three.png
    with Image.open(src) as im:
        im.save(new_scans / "a" / "tiff.png", format="TIFF")
    scans, excluded = ing.discover_scans(new_scans)
    assert len(scans) == 4
    reasons = dict(zip(excluded["file"], excluded["reason"]))
    expected = {
        "a/readme.md": "not a scan",
        "a/cut.jpeg": "unreadable image",
        "a/fake.png": "unreadable image",
        "deep.png": "unexpected image mode I",
        "Patient 1/x.jpeg": "folder name 'Patient 1' cannot name an output file",
        "a__three.jpeg": "id 'a__three' is also that of a/three.png",
        "a/tiff.png": "not a JPEG or PNG image (PIL reads it as TIFF)",
    }
    assert set(reasons) == set(expected)
    for file, words in expected.items():
        assert words in reasons[file], (file, reasons[file])


def test_no_usable_scan_or_no_folder_is_one_input_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="the folder is empty") as e:
        ing.discover_scans(tmp_path / "empty")
    assert type(e.value) is InputError
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"no")
    with pytest.raises(InputError, match=r"1 file\(s\), none usable \(first: a.png: unreadable") as e:
        ing.discover_scans(tmp_path / "junk")
    assert type(e.value) is InputError and e.value.path == str(tmp_path / "junk")
    with pytest.raises(InputError, match="not found"):
        ing.discover_scans(tmp_path / "nowhere")


def test_predict_inputs_are_the_files_of_a_folder_or_the_folder_itself(new_scans, tmp_path):
    assert ing.predict_inputs(new_scans) == ing.scan_files(new_scans) and len(ing.scan_files(new_scans)) == 4
    assert ing.predict_inputs(new_scans, written_by_workflow=True) == [str(new_scans)]
    assert ing.predict_inputs(tmp_path / "nowhere") == [str(tmp_path / "nowhere")]


@pytest.mark.parametrize(
    ("relative", "problem"),
    [("..x/a.png", "folder name '..x'"), ("a/.b.png", "file name '.b'"), ("é/a.png", "folder name 'é'")],
)
def test_scan_id_refuses_unsafe_names(relative, problem):
    with pytest.raises(InputError, match=problem):
        ing.scan_id(relative)
    assert ing.scan_id("x/y.z/scan-1.png") == "x__y.z__scan-1"

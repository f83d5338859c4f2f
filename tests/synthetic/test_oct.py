"""Synthetic OCT2017: the Kermany layout and names, greyscale JPEGs of varying size, several images
per patient, one split per patient (some patients in two classes, as in the real set), deterministic,
and classes that differ visibly."""

import re

import numpy as np
import pytest
from PIL import Image

from medflow.synthetic import oct as syn

SMALL = {
    "patients": {"train": 4, "val": 1, "test": 2},
    "images_per_patient": [1, 3],
    "height": [40, 64],
    "aspect": [1.0, 1.5],
}
NAME = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d{7})-(\d+)\.jpeg$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("oct") / "OCT2017"
    counts = syn.generate(root, SMALL, seed=7)
    return root, counts


def files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_names_and_counts(tree):
    root, counts = tree
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    for split in syn.SPLITS:
        assert sorted(p.name for p in (root / split).iterdir()) == ["CNV", "DME", "DRUSEN", "NORMAL"]
    seen = {s: 0 for s in syn.SPLITS}
    for p in files(root):
        split, cls = p.parts[-3], p.parts[-2]
        m = NAME.match(p.name)
        assert m and m.group(1) == cls, p
        seen[split] += 1
    assert seen == counts
    assert not list(root.parent.glob(".*tmp")), "the temporary tree is renamed into place"


def test_images_are_greyscale_jpegs_of_varying_size_within_config(tree):
    root, _ = tree
    sizes = set()
    for p in files(root):
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "L"
            w, h = im.size
        assert 40 <= h <= 64 and 1.0 <= w / h <= 1.5 + 1 / h
        sizes.add((w, h))
    assert len(sizes) > 5


def patients(root):
    """{patient id: {(split, class): [n, ...]}} from the file names alone."""
    out = {}
    for p in files(root):
        cls, pid, n = NAME.match(p.name).groups()
        out.setdefault(pid, {}).setdefault((p.parts[-3], cls), []).append(int(n))
    return out


def test_patients_have_several_images_one_split_and_some_several_classes(tree):
    """Real Kermany patients have B-scans in several class folders; a split must keep them whole."""
    root, _ = tree
    where = patients(root)
    assert len(where) == 4 * (4 + 1 + 2)
    assert all(len({split for split, _ in v}) == 1 for v in where.values()), "a patient lies in one split"
    assert max(len(n) for v in where.values() for n in v.values()) > 1
    assert all(sorted(n) == list(range(1, len(n) + 1)) for v in where.values() for n in v.values()), (
        "n counts from 1 per patient and class"
    )
    for split, per_class in SMALL["patients"].items():
        n_classes = [len(v) for v in where.values() if next(iter(v))[0] == split]
        assert max(n_classes) == 2
        # the default share: 1/4 of the split's 4 x per_class patients
        assert sum(k == 2 for k in n_classes) == per_class, split


def test_multi_class_share_is_configurable(tmp_path):
    root = tmp_path / "OCT2017"
    syn.generate(root, {**SMALL, "multi_class": 0.0}, seed=7)
    assert all(len(v) == 1 for v in patients(root).values())
    syn.generate(root, {**SMALL, "multi_class": 1.0}, seed=7)
    assert all(len(v) == 2 for v in patients(root).values())


def test_deterministic_from_seed(tree, tmp_path):
    root, _ = tree
    again = tmp_path / "a" / "OCT2017"
    syn.generate(again, SMALL, seed=7)
    assert [p.relative_to(again) for p in files(again)] == [p.relative_to(root) for p in files(root)]
    assert all(p.read_bytes() == (root / p.relative_to(again)).read_bytes() for p in files(again))
    other = tmp_path / "b" / "OCT2017"
    syn.generate(other, SMALL, seed=8)
    assert [p.name for p in files(other)] != [p.name for p in files(root)]


def test_classes_are_separable_by_a_simple_classifier(tmp_path):
    """The class patterns are visible at low resolution: a linear model on standardised 16 x 16
    thumbnails of some patients classifies other patients' images well above chance (0.25)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path / "OCT2017"
    syn.generate(root, {**SMALL, "patients": {"train": 8, "val": 1, "test": 6}}, seed=3)

    def xy(split):
        x, y = [], []
        for i, cls in enumerate(syn.CLASSES):
            for p in sorted((root / split / cls).iterdir()):
                with Image.open(p) as im:
                    x.append(np.asarray(im.resize((16, 16)), dtype=float).ravel())
                y.append(i)
        return np.array(x), np.array(y)

    xtr, ytr = xy("train")
    xte, yte = xy("test")
    acc = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(xtr, ytr).score(xte, yte)
    assert acc > 0.5, acc


# --- the unlabeled scans to predict on (synthetic_oct_predict) ------------------------------------------------


@pytest.fixture(scope="module")
def new_scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("octpredict") / "new_scans"
    counts = syn.generate_predict(root, {**SMALL, "predict": {"n_images": 10}}, seed=7)
    return root, counts


def test_unlabeled_scans_are_a_tree_of_jpeg_and_png_grey_and_rgb(new_scans):
    root, counts = new_scans
    images = [p for p in files(root) if p.relative_to(root).as_posix() not in syn.BAD_FILES]
    assert len(images) == 10 and counts == {"jpeg": 7, "png": 3, "rgb": 5, "bad": 2}
    kinds = set()
    for p in images:
        assert re.fullmatch(r"scan_\d{3}\.(jpeg|png)", p.name), p  # no class in the name: unlabeled
        with Image.open(p) as im:
            kinds.add((im.format, im.mode))
            assert 40 <= im.size[1] <= 64
    assert kinds == {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGB")}
    depths = {len(p.relative_to(root).parts) for p in images}
    assert depths == {1, 2, 3}, "top level, one and two folders down"
    assert not list(root.parent.glob(".*tmp"))


def test_the_two_bad_files_are_excluded_by_the_prediction_ingest_with_reasons(new_scans):
    from medflow.ingest.oct import discover_scans

    root, _ = new_scans
    scans, excluded = discover_scans(root)
    assert len(scans) == 10 and scans["id"].is_unique
    reasons = dict(zip(excluded["file"], excluded["reason"]))
    assert sorted(reasons) == sorted(syn.BAD_FILES)
    assert "unreadable image" in reasons["clinic_b/visit_2/scan_truncated.jpeg"]
    assert "not a scan" in reasons["clinic_b/notes.txt"]


def test_unlabeled_scans_are_deterministic_and_apart_from_the_training_tree(new_scans, tmp_path):
    root, _ = new_scans
    again = tmp_path / "new_scans"
    syn.generate_predict(again, {**SMALL, "predict": {"n_images": 10}}, seed=7)
    assert [p.relative_to(again) for p in files(again)] == [p.relative_to(root) for p in files(root)]
    assert all(p.read_bytes() == (root / p.relative_to(again)).read_bytes() for p in files(again))
    # the training patients' settings do not change the scans (only their size and quality settings do)
    other = tmp_path / "other"
    syn.generate_predict(other, {**SMALL, "patients": {"train": 9}, "predict": {"n_images": 10}}, seed=7)
    assert all(p.read_bytes() == (root / p.relative_to(other)).read_bytes() for p in files(other))
    assert syn.settings({"predict": {"n_images": 3}})["predict"] == {"n_images": 3}
    assert syn.settings(None)["predict"] == {"n_images": 24}

"""The synthetic MRNet download: public layout and dtypes, labels, findings seen in every plane."""

import numpy as np
import pytest

from medflow.synthetic import mrnet as sm

TINY = {"n_train": 6, "n_valid": 4, "slices": [3, 5]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrnet") / "MRNet-v1.0"
    assert sm.generate(TINY, root, seed=3) == {"train": 6, "valid": 4}
    return root


def test_layout_dtypes_and_varying_slice_counts(root):
    counts = set()
    for split, ids in (("train", [f"{i:04d}" for i in range(6)]), ("valid", [f"{i:04d}" for i in range(6, 10)])):
        for plane in ("axial", "coronal", "sagittal"):
            files = sorted(p.name for p in (root / split / plane).iterdir())
            assert files == [f"{e}.npy" for e in ids]
            for e in ids:
                arr = np.load(root / split / plane / f"{e}.npy", allow_pickle=False)
                assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[1:] == (256, 256)
                assert 3 <= arr.shape[0] <= 5
                counts.add(arr.shape[0])
        for task in ("abnormal", "acl", "meniscus"):
            lines = (root / f"{split}-{task}.csv").read_text().splitlines()
            # No header; NNNN,label rows in id order, as in the public files.
            assert [ln.split(",")[0] for ln in lines] == ids
            assert {ln.split(",")[1] for ln in lines} <= {"0", "1"}
    assert len(counts) > 1, "slice counts vary between series"


def test_labels_have_realistic_imbalance_and_consistency():
    labels = sm.draw_labels({"n_train": 200, "n_valid": 100}, seed=0)
    for split, n in (("train", 200), ("valid", 100)):
        lab = labels[split]
        assert sum(lab["abnormal"].values()) == round(0.8 * n)
        assert sum(lab["acl"].values()) == round(0.2 * n)
        assert sum(lab["meniscus"].values()) == round(0.35 * n)
        for e in lab["abnormal"]:
            if lab["acl"][e] or lab["meniscus"][e]:
                assert lab["abnormal"][e] == 1, "ACL and meniscus tears are abnormal exams"
    tiny = sm.draw_labels({"n_train": 4, "n_valid": 2}, seed=0)
    for split in tiny.values():
        for task in split.values():
            assert set(task.values()) == {0, 1}, "even tiny splits have both classes of every task"


def test_deterministic_and_independent_of_exam_count():
    a = sm.make_exam(TINY, 5, "0002", {"abnormal": 1, "acl": 1, "meniscus": 0})
    b = sm.make_exam({**TINY, "n_train": 50}, 5, "0002", {"abnormal": 1, "acl": 1, "meniscus": 0})
    for plane in sm.PLANES:
        assert np.array_equal(a[plane], b[plane])
    c = sm.make_exam(TINY, 6, "0002", {"abnormal": 1, "acl": 1, "meniscus": 0})
    assert not np.array_equal(a["axial"], c["axial"])


@pytest.mark.parametrize("finding", ["acl", "meniscus"])
def test_finding_is_visible_in_all_three_planes(finding):
    """A tear is bright (high signal) tissue where the normal knee has none: every plane's series shows
    more very bright pixels than the same exam without the tear."""
    cfg = {**TINY, "slices": [6, 6], "other_findings": 0.0, "noise": 0.0}
    normal = sm.make_exam(cfg, 1, "0007", {"abnormal": 0, "acl": 0, "meniscus": 0})
    torn = sm.make_exam(
        cfg, 1, "0007", {"abnormal": 1, "acl": int(finding == "acl"), "meniscus": int(finding == "meniscus")}
    )
    for plane in sm.PLANES:
        assert (normal[plane] > 200).sum() == 0, "normal anatomy stays below the signal of a tear"
        assert (torn[plane] > 200).sum() > 100, f"{finding} tear not visible in the {plane} plane"


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="unknown synthetic.mrnet keys"):
        sm.settings({"n_exams": 3})

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


def test_new_exams_are_unlabeled_in_the_download_layout_with_ids_after_the_valid_exams(tmp_path):
    from medflow.ingest.mrnet import discover_new

    cfg = {**TINY, "predict": {"n_exams": 4}}
    folder = tmp_path / "new_exams"
    assert sm.generate_new(cfg, folder, seed=3) == 4
    ids = [f"{i:04d}" for i in range(10, 14)]
    assert sorted(p.name for p in folder.iterdir()) == ["axial", "coronal", "sagittal"]  # no label files
    for plane in ("axial", "coronal", "sagittal"):
        assert sorted(p.name for p in (folder / plane).iterdir()) == [f"{e}.npy" for e in ids]
    new = discover_new(folder)  # what the predict stage reads, with the training download's checks
    assert new.exams["id"].tolist() == ids and new.excluded.empty
    assert new.exams[["slices_axial", "slices_coronal", "slices_sagittal"]].isin(range(3, 6)).all().all()
    # Drawn like the download's exams: the same phantom for the same id, seed and labels; findings present.
    labels = sm.new_exam_labels(cfg, seed=3)
    first = np.load(folder / "sagittal" / "0010.npy")
    again = sm.make_exam(cfg, 3, "0010", {t: labels[t]["0010"] for t in labels})["sagittal"]
    np.testing.assert_array_equal(first, again)
    assert {sum(labels["abnormal"].values()), sum(labels["acl"].values())} <= set(range(1, 4))
    # A smaller set leaves no strays; the config block is checked.
    assert sm.generate_new({**TINY, "predict": {"n_exams": 1}}, folder, seed=3) == 1
    assert sorted(p.name for p in (folder / "axial").iterdir()) == ["0010.npy"]
    with pytest.raises(ValueError, match="synthetic.mrnet.predict"):
        sm.settings({"predict": {"n_cases": 2}})


def test_the_predict_block_changes_no_training_exam():
    with_predict = sm.draw_labels({**TINY, "predict": {"n_exams": 50}}, seed=0)
    assert with_predict == sm.draw_labels(TINY, seed=0)

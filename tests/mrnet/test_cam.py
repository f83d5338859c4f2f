"""MRNet's class-activation maps: per plane the slice that wins most features of the max over slices, with its
Grad-CAM; PNGs of the evaluate stage (valid exams) and maps of the trained models that are not constant."""

import numpy as np
import pandas as pd
import torch

from medflow.ingest.mrnet import npy_path
from medflow.mrnet import cam
from medflow.mrnet.data import ExamDataset
from medflow.mrnet.model import load_model

PLANES = ("axial", "coronal", "sagittal")


def test_winning_counts_are_who_gives_each_feature_its_maximum():
    torch.manual_seed(0)
    from medflow.mrnet.model import MRNet

    model = MRNet().eval()
    slices = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8)
    counts = cam.winning_counts(model, slices)
    with torch.no_grad():
        feats = model.slice_features(slices)  # (5, 256)
    # Slice k wins feature f when it is the first to hold f's maximum over slices, unless f is 0 everywhere.
    top = feats.max(0).values
    winner = [int(np.flatnonzero(feats[:, f].numpy() == top[f].item())[0]) for f in range(256) if top[f] > 0]
    assert counts.shape == (5,) and counts.tolist() == np.bincount(winner, minlength=5).tolist()
    assert 0 < counts.sum() == int((top > 0).sum()) <= 256
    # The model's training mode is left alone; the maps do not touch its weights.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = cam.slice_maps(model, slices)
    assert maps.shape == (5, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluation_draws_the_exams_of_highest_stacked_probability(trained):
    folder = trained["evaluate"]["cams"]
    table = pd.read_csv(trained["evaluate"]["predictions"], dtype={"id": str})
    top = table.sort_values("stacked", ascending=False, kind="stable")["id"].head(2)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{e}.png" for e in top)
    for png in folder.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maps_of_the_trained_models_mark_part_of_the_slice_that_drives_the_max(trained, tmp_path):
    models = {p: load_model(c) for p, c in zip(PLANES, trained["checkpoints"])}
    sizes = dict.fromkeys(PLANES, 64)
    drawn = 0
    for exam in ("0016", "0017", "0018"):
        paths = {p: npy_path(trained["root"], "valid", p, exam) for p in PLANES}
        panels = cam.save_exam_cams(models, sizes, paths, tmp_path / f"{exam}.png", title=f"acl: exam {exam}")
        assert (tmp_path / f"{exam}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [c.plane for c in panels] == list(PLANES)
        for c, plane in zip(panels, PLANES):
            stored = np.load(paths[plane])
            # The slice drawn is the one that wins most features, shown as stored with its map upsampled.
            slices, _ = ExamDataset("", plane, [exam], [""], [0], 64, paths=[paths[plane]])[0]
            counts = cam.winning_counts(models[plane], slices)
            assert c.slice == int(np.argmax(counts)) and c.wins == counts.max() and c.n_slices == len(stored)
            np.testing.assert_array_equal(c.image, stored[c.slice])
            assert c.cam.shape == (256, 256) and 0 <= c.cam.min() and c.cam.max() <= 1
            assert c.positive == (c.prob >= 0.5)  # the map explains the plane model's own call
            drawn += int(c.cam.max() - c.cam.min() > 0.5)  # a map that marks some of the slice, not all or none
    assert drawn == 9, "every plane's map of every exam should single out part of its slice"

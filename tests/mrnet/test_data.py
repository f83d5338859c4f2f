"""Packed batches: whole exams, a slice budget, every exam once per epoch, reproducible shuffles."""

import numpy as np
import torch

from medflow.mrnet.data import ExamDataset, PackedBatchSampler, collate_packed


def test_packing_respects_the_budget_and_keeps_exams_whole():
    counts = [5, 3, 9, 2, 7, 4, 12, 1]
    sampler = PackedBatchSampler(counts, max_slices=10, shuffle=False)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        total = sum(counts[i] for i in b)
        assert total <= 10 or len(b) == 1, "only an exam larger than the budget exceeds it, alone"
    assert len(sampler) == len(batches)
    assert batches == [[0, 1], [2], [3, 4], [5], [6], [7]]


def test_shuffle_is_reproducible_from_the_global_seed():
    sampler = PackedBatchSampler([3] * 20, max_slices=9, shuffle=True)
    torch.manual_seed(4)
    a = list(sampler)
    torch.manual_seed(4)
    b = list(sampler)
    c = list(sampler)
    assert a == b and a != c
    assert sorted(i for x in a for i in x) == list(range(20))


def test_dataset_resizes_and_collate_packs(tmp_path):
    for plane in ("axial",):
        (tmp_path / "train" / plane).mkdir(parents=True)
        (tmp_path / "valid" / plane).mkdir(parents=True)
    np.save(tmp_path / "train/axial/0000.npy", np.full((4, 256, 256), 200, np.uint8))
    np.save(tmp_path / "valid/axial/0009.npy", np.full((2, 256, 256), 10, np.uint8))
    ds = ExamDataset(tmp_path, "axial", ["0000", "0009"], ["train", "valid"], [1, 0], size=64)
    x, y = ds[0]
    assert x.shape == (4, 64, 64) and x.dtype == torch.uint8 and y == 1.0 and int(x[0, 10, 10]) == 200
    batch = collate_packed([ds[0], ds[1]])
    assert batch["slices"].shape == (6, 64, 64)
    assert batch["counts"].tolist() == [4, 2] and batch["label"].tolist() == [1.0, 0.0]
    assert int(batch["slices"][5, 0, 0]) == 10, "exams are concatenated in order"


def test_resize_averages_when_shrinking():
    from medflow.mrnet.data import resize

    exam = torch.zeros(2, 256, 256, dtype=torch.uint8)
    exam[:, :128] = 200
    exam[1, 128:132, :4] = 255  # one 4x4 block -> one output pixel at 64 px
    out = resize(exam, 64)
    assert out.shape == (2, 64, 64) and out.dtype == torch.uint8
    assert int(out[0, 0, 0]) == 200 and int(out[0, 63, 63]) == 0 and int(out[1, 32, 0]) == 255
    assert resize(exam, 300).shape == (2, 300, 300)


def test_exam_table_keeps_the_requested_order_and_one_task_and_plane():
    import pandas as pd

    from medflow.mrnet.data import exam_table

    manifest = pd.DataFrame(
        {
            "id": ["0000", "0001", "0002"],
            "split": ["train", "train", "valid"],
            "abnormal": [1, 0, 1],
            "acl": [0, 1, 0],
            "meniscus": [0, 0, 1],
            "slices_axial": [3, 4, 5],
            "slices_coronal": [6, 7, 8],
            "slices_sagittal": [9, 10, 11],
        }
    )
    t = exam_table(manifest, ["0002", "0001", "0000"], "acl", "coronal")
    assert t.columns.tolist() == ["id", "split", "label", "slices"]
    assert t.values.tolist() == [["0002", "valid", 0, 8], ["0001", "train", 1, 7], ["0000", "train", 0, 6]]

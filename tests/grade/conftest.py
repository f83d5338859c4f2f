"""Small stacked BraTS cases in the contract of the brats_prep stage (results/brats/stack/{case}.h5):
``image`` float32 (4, Z, Y, X) flair, t1, t1ce, t2; ``label`` uint8 (Z, Y, X) with 4 stored as 3;
attributes case_id etc. HGG cases carry a bright T1ce ring, LGG cases none, so a model can learn."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest


def make_stack(path, case, grade, seed, shape=(10, 32, 32), tumour_z=(3, 8), radius=6):
    """Write one stacked case; the tumour spans slices ``tumour_z`` [start, stop), largest in the middle."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    brain = ((y - cy) / (shape[1] * 0.42)) ** 2 + ((x - cx) / (shape[2] * 0.42)) ** 2 < 1
    image = np.zeros((4, *shape), np.float32)
    scale = np.array([300.0, 500.0, 600.0, 800.0])[:, None, None, None]
    image[:] = brain * scale * (1 + 0.05 * rng.standard_normal((4, *shape)))
    label = np.zeros(shape, np.uint8)
    mid = (tumour_z[0] + tumour_z[1] - 1) / 2
    for k in range(*tumour_z):
        r = radius * (1 - 0.6 * abs(k - mid) / max(1, (tumour_z[1] - tumour_z[0]) / 2))
        d = np.hypot(y[k] - cy, x[k] - cx - 3)
        label[k][d < r] = 2
        label[k][d < r * 0.5] = 1
        if grade == "HGG":
            ring = (d < r * 0.75) & (d >= r * 0.5)
            label[k][ring] = 3
            image[2, k][ring] *= 2.5
    image[0][label > 0] *= 1.6  # oedema bright in FLAIR
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, chunks=(1, *shape))
        f.create_dataset("label", data=label)
        f.attrs["case_id"] = case
        f.attrs["modalities"] = json.dumps(["flair", "t1", "t1ce", "t2"])
        f.attrs["kept_z_range"] = np.array([2, 2 + shape[0]])
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """12 cases (6 HGG, 6 LGG): 4 + 4 train, 1 + 1 val, 1 + 1 test; returns (stacks dict, split csv path)."""
    tmp = tmp_path_factory.mktemp("grade")
    (tmp / "stack").mkdir()
    rows, stacks = [], {}
    plan = ["train"] * 4 + ["val", "test"]
    for i in range(12):
        case = f"BraTS20_Training_{i + 1:03d}"
        grade = "HGG" if i % 2 == 0 else "LGG"
        split = plan[i // 2]
        stacks[case] = str(make_stack(tmp / "stack" / f"{case}.h5", case, grade, seed=i, tumour_z=(2 + i % 3, 8)))
        rows.append({"id": case, "split": split, "grade": grade})
    split_csv = tmp / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    return stacks, split_csv

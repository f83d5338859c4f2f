"""Small fake BraTS files in the preprocessing stage's formats (stacked cases, patches, split), so the
segmentation library is tested on its own, before and apart from the preprocessing code."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd

from medflow.preprocess.patches import standardise

ORIGINAL_ZYX = (20, 24, 24)  # raw volume; the stacks keep slices [2, 18)
KEPT = (2, 18)
SPACING_ZYX = (2.0, 1.0, 1.0)
PATCH = (8, 16, 16)


def affine_for(spacing_zyx=SPACING_ZYX):
    """A NIfTI affine (i, j, k) = (X, Y, Z) voxels -> mm, with an LPS-like flip and an offset."""
    a = np.diag([-spacing_zyx[2], -spacing_zyx[1], spacing_zyx[0], 1.0])
    a[:3, 3] = (10.0, 20.0, -5.0)
    return a


def make_case(seed, shape=ORIGINAL_ZYX):
    """A brain-like (4, Z, Y, X) image and its stored label map: an ellipsoid brain with a tumour of
    oedema (2) around a core of enhancing tumour (3 = BraTS 4) around necrosis (1), visible in the
    modalities the way BraTS shows them (FLAIR bright oedema, T1ce bright enhancing rim)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    centre = np.array(shape) / 2
    brain = ((z - centre[0]) / (shape[0] * 0.35)) ** 2 + ((y - centre[1]) / (shape[1] * 0.42)) ** 2 + (
        (x - centre[2]) / (shape[2] * 0.42)
    ) ** 2 <= 1
    brain[: KEPT[0]] = False
    brain[KEPT[1] :] = False
    c = centre + rng.uniform(-2, 2, 3)
    r = np.sqrt(((z - c[0]) / 2) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)  # z spacing is 2 mm
    label = np.zeros(shape, np.uint8)
    radius = rng.uniform(4.5, 6.5)
    label[(r <= radius) & brain] = 2
    label[(r <= radius * 0.6) & brain] = 3
    label[(r <= radius * 0.3) & brain] = 1
    base = np.array([1.0, 1.2, 1.1, 0.8])[:, None, None, None] * brain
    image = base + 0.05 * rng.standard_normal((4, *shape)) * brain
    image[0] += 1.0 * (label == 2) + 0.6 * (label == 3)  # flair
    image[1] -= 0.4 * (label > 0)  # t1
    image[2] += 1.2 * (label == 3) - 0.3 * (label == 1)  # t1ce
    image[3] += 0.9 * (label > 0)  # t2
    return (image * brain).astype(np.float32), label


def write_stack(path, case, image, label):
    """Stacked case: the kept slices of the raw volume plus the attributes of the contract."""
    with h5py.File(path, "w") as f:
        f["image"] = image[:, KEPT[0] : KEPT[1]]
        f["label"] = label[KEPT[0] : KEPT[1]]
        f.attrs["case_id"] = case
        f.attrs["modalities"] = json.dumps(["flair", "t1", "t1ce", "t2"])
        f.attrs["spacing_zyx"] = np.array(SPACING_ZYX)
        f.attrs["affine"] = affine_for()
        f.attrs["original_shape_zyx"] = np.array(ORIGINAL_ZYX)
        f.attrs["kept_z_range"] = np.array(KEPT)
        f.attrs["source_files"] = json.dumps([f"{case}_{m}.nii" for m in ("flair", "t1", "t1ce", "t2", "seg")])


def write_patches(path, image, label, n, seed, patch=PATCH):
    """Patches of the kept slices: image (N, 4, *patch) standardised patch by patch with the
    preprocessing stage's function, one-hot label (N, 3, *patch)."""
    image, label = image[:, KEPT[0] : KEPT[1]], label[KEPT[0] : KEPT[1]]
    rng = np.random.default_rng(seed)
    imgs, labs, origins = [], [], []
    for _ in range(n):
        o = [int(rng.integers(0, s - p + 1)) for s, p in zip(label.shape, patch)]
        box = tuple(slice(a, a + p) for a, p in zip(o, patch))
        imgs.append(standardise(image[(slice(None), *box)]))
        labs.append(np.stack([label[box] == k for k in (1, 2, 3)]).astype(np.uint8))
        origins.append(o)
    with h5py.File(path, "w") as f:
        f["image"] = np.stack(imgs)
        f["label"] = np.stack(labs)
        f["origins"] = np.array(origins)
        f.attrs["n_patches"] = n


def write_split(path, splits):
    rows = [{"id": c, "split": s, "grade": "HGG"} for s, cases in splits.items() for c in cases]
    pd.DataFrame(rows).to_csv(path, index=False)

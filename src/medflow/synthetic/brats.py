"""Synthetic BraTS 2020 training data in the public layout, deterministic from a seed.

``MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii``
(int16 modalities, uint8 segmentation, 1 mm voxels, a BraTS-like affine) plus ``name_mapping.csv``.

Each case is a skull-stripped, brain-like ellipsoid (white matter, a folded grey-matter cortex,
ventricles and a midline fissure of CSF) with blank axial slices at both ends, a tumour and an
independent smooth multiplicative bias field per modality. Tumour labels as in BraTS: 1 necrotic /
non-enhancing core, 2 oedema, 4 enhancing tumour. Contrasts follow clinical MR: oedema bright in
FLAIR and T2, enhancing tumour bright in T1ce, CSF dark in FLAIR and T1, bright in T2. Grades differ
as a CNN can see on axial slices: HGG tumours are larger, with a T1ce-bright enhancing ring around
a necrotic centre; LGG tumours are smaller, with a homogeneous non-enhancing core and (mostly) no
enhancement.

Config (``synthetic.brats``): ``n_cases``, ``hgg_fraction``, ``shape_xyz`` (NIfTI order, real files
are 240 x 240 x 155), ``blank_slices`` [min, max] per end, ``bias_strength`` (max |log field|),
``noise`` (sd relative to white matter).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medflow.ingest.brats import MODALITIES, NAME_MAPPING

log = logging.getLogger(__name__)

TISSUES = ("csf", "gm", "wm", "ncr", "net", "ed", "et")
# Mean intensity of each tissue per modality, relative to white matter in T1 (arbitrary MR units).
CONTRAST = {
    "flair": {"csf": 0.15, "gm": 0.80, "wm": 0.60, "ncr": 0.55, "net": 1.10, "ed": 1.45, "et": 0.95},
    "t1": {"csf": 0.25, "gm": 0.65, "wm": 0.90, "ncr": 0.30, "net": 0.50, "ed": 0.55, "et": 0.70},
    "t1ce": {"csf": 0.25, "gm": 0.65, "wm": 0.90, "ncr": 0.25, "net": 0.50, "ed": 0.55, "et": 1.70},
    "t2": {"csf": 1.50, "gm": 0.85, "wm": 0.55, "ncr": 1.35, "net": 1.20, "ed": 1.20, "et": 0.90},
}
SCALE = {"flair": 450, "t1": 600, "t1ce": 700, "t2": 900}  # int16 units of white matter-ish tissue
MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
DEFAULTS = {
    "n_cases": 24,
    "hgg_fraction": 0.5,
    "shape_xyz": [64, 64, 48],
    "blank_slices": [2, 5],
    "bias_strength": 0.3,
    "noise": 0.03,
}


def _cfg(cfg: dict) -> dict:
    return {**DEFAULTS, **(cfg or {})}


def case_ids(cfg: dict) -> list[str]:
    """Case ids of the synthetic copy (``cfg`` = ``config["synthetic"]["brats"]``)."""
    return [f"BraTS20_Training_{i:03d}" for i in range(1, int(_cfg(cfg)["n_cases"]) + 1)]


def grades(cfg: dict, seed: int) -> dict[str, str]:
    """{case: HGG | LGG}: round(hgg_fraction * n) HGG cases, shuffled by ``seed``."""
    cfg = _cfg(cfg)
    ids = case_ids(cfg)
    n_hgg = int(round(cfg["hgg_fraction"] * len(ids)))
    labels = np.array(["HGG"] * n_hgg + ["LGG"] * (len(ids) - n_hgg))
    np.random.default_rng([seed, 2020]).shuffle(labels)
    return dict(zip(ids, labels.tolist()))


def brats_affine(shape_xyz) -> np.ndarray:
    """The affine of the real BraTS files (x and y flipped, 1 mm), for any grid size."""
    a = np.diag([-1.0, -1.0, 1.0, 1.0])
    a[1, 3] = shape_xyz[1] - 1
    return a


def smooth_field(rng: np.random.Generator, shape, cells: int = 6) -> np.ndarray:
    """A smooth random field of ``shape`` (sd about 1): cubic interpolation of coarse noise, so it is
    cheap at any size."""
    from scipy import ndimage

    coarse_shape = [max(3, min(cells, s)) for s in shape]
    coarse = rng.standard_normal(coarse_shape)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse_shape)], order=3, mode="reflect", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    return (field - field.mean()) / (field.std() + 1e-8)


def _bias(rng: np.random.Generator, grids, strength: float, brain: np.ndarray) -> np.ndarray:
    """exp of a random low-order polynomial in normalised coordinates, centred on the brain, with
    max |log| = ``strength`` inside the brain."""
    z, y, x = grids
    terms = [x, y, z, x * y, y * z, x * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3]
    log_field = sum(c * t for c, t in zip(rng.uniform(-1, 1, len(terms)), terms))
    log_field = log_field - log_field[brain].mean()
    log_field = log_field * (strength / (np.abs(log_field[brain]).max() + 1e-8))
    return np.exp(log_field).astype(np.float32)


def make_case(
    rng: np.random.Generator,
    grade: str,
    shape_xyz,
    blank_slices=(2, 5),
    bias_strength=0.3,
    noise=0.03,
    bias_out: dict | None = None,
    tumour_scale: float = 1.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: ({modality: int16 (X, Y, Z)}, seg uint8 (X, Y, Z) in BraTS labels 0/1/2/4).

    ``bias_out``, if given, receives each modality's true multiplicative bias field (X, Y, Z).
    ``tumour_scale`` multiplies the tumour radii: the demo's miniature brains get large tumours (1.0)
    so patches find them; about 0.6 gives real-sized whole tumours (~50-150 cm3) at 240 x 240 x 155.
    """
    from scipy import ndimage

    nx, ny, nz = (int(s) for s in shape_xyz)
    shape = (nz, ny, nx)  # built in (Z, Y, X), written in the file's (X, Y, Z)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)

    # Brain: an ellipsoid with a wobbly outline that stops short of both ends of the volume.
    lo, hi = int(blank_slices[0]), int(blank_slices[1])
    b0, b1 = rng.integers(lo, hi + 1, size=2)
    z_first, z_last = int(b0), nz - 1 - int(b1)
    az = (z_last - z_first + 1) / 2
    cz = z_first + az - 0.5
    ay, ax = 0.40 * ny * rng.uniform(0.92, 1.0), 0.33 * nx * rng.uniform(0.92, 1.0)
    cy, cx = (ny - 1) / 2 + rng.uniform(-0.03, 0.03) * ny, (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * nx
    zn, yn, xn = (z - cz) / az, (y - cy) / ay, (x - cx) / ax
    r = np.sqrt(zn**2 + yn**2 + xn**2)
    wobble = smooth_field(rng, shape, cells=5)
    brain = r * (1 + 0.04 * wobble) <= 1.0
    brain[:z_first] = False
    brain[z_last + 1 :] = False

    # Tissues: a folded cortex (grey matter), white matter inside, ventricles and fissure (CSF).
    gyri = smooth_field(rng, shape, cells=max(6, nx // 6))
    tissue = np.full(shape, TISSUES.index("wm"), np.int8)
    tissue[r > 0.80 + 0.07 * gyri] = TISSUES.index("gm")
    vent = ((np.abs(xn) - 0.16) / 0.09) ** 2 + (yn / 0.35) ** 2 + ((zn - 0.1) / 0.30) ** 2 <= 1
    fissure = (np.abs(x - cx) < max(0.6, nx / 120)) & (r > 0.45) & (yn < 0.85)
    tissue[vent | fissure | (r > 0.97)] = TISSUES.index("csf")

    # Tumour in one hemisphere; radii in voxels, relative to the brain's size.
    hgg = grade == "HGG"
    side = rng.choice([-1.0, 1.0])
    tc = np.array(
        [cz + rng.uniform(-0.25, 0.25) * az, cy + rng.uniform(-0.3, 0.3) * ay, cx + side * rng.uniform(0.35, 0.45) * ax]
    )
    r_ed = (rng.uniform(0.55, 0.70) if hgg else rng.uniform(0.50, 0.62)) * ax * tumour_scale
    elong = rng.uniform(0.85, 1.15, size=3)
    d = np.sqrt(((z - tc[0]) / elong[0]) ** 2 + ((y - tc[1]) / elong[1]) ** 2 + ((x - tc[2]) / elong[2]) ** 2)
    d = d * (1 + 0.12 * smooth_field(rng, shape, cells=max(5, nx // 8)))
    seg = np.zeros(shape, np.uint8)
    seg[d <= r_ed] = 2
    if hgg:
        r_core = r_ed * rng.uniform(0.60, 0.72)
        seg[d <= r_core] = 4
        seg[d <= r_core * rng.uniform(0.45, 0.60)] = 1
        core_tissue = {4: "et", 1: "ncr"}
    else:
        seg[d <= r_ed * rng.uniform(0.45, 0.60)] = 1
        core_tissue = {1: "net", 4: "et"}
        if rng.random() < 0.15:  # a few LGG show a small enhancing focus
            seg[d <= r_ed * 0.15] = 4
    seg[~brain] = 0
    tissue[seg == 2] = TISSUES.index("ed")
    for label, name in core_tissue.items():
        tissue[seg == label] = TISSUES.index(name)

    # Intensities: contrast table x texture x bias field + noise, light partial-volume blur.
    texture = smooth_field(rng, shape, cells=max(8, nx // 4))
    grids = (zn / 1.3, yn / 1.3, xn / 1.3)
    images = {}
    brain_f = brain.astype(np.float32)
    for mod in MODALITIES:
        table = np.array([CONTRAST[mod][t] for t in TISSUES], np.float32)
        img = table[tissue] * (1 + 0.04 * texture)
        img = ndimage.gaussian_filter(img * brain_f, 0.6)
        bias = _bias(rng, grids, bias_strength, brain)
        if bias_out is not None:
            bias_out[mod] = bias.transpose(2, 1, 0)
        img = img * bias + noise * rng.standard_normal(shape).astype(np.float32)
        img = np.clip(img * SCALE[mod], 1, 32000)  # nonzero inside the brain: zero means no signal
        img = np.rint(img).astype(np.int16) * brain  # skull-stripped: exactly zero outside
        images[mod] = np.ascontiguousarray(img.transpose(2, 1, 0))
    return images, np.ascontiguousarray(seg.transpose(2, 1, 0))


def write_nifti(data_xyz: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    import nibabel as nib

    from medflow import io

    img = nib.Nifti1Image(data_xyz, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with io.atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def generate(cfg: dict, out_dir: str | os.PathLike, seed: int) -> list[str]:
    """Write every case and ``name_mapping.csv`` under ``out_dir`` (the MICCAI_BraTS2020_TrainingData
    folder); returns the case ids. Case k's content depends only on (seed, k) and its grade."""
    import pandas as pd

    from medflow import io

    cfg = _cfg(cfg)
    out = Path(out_dir)
    shape_xyz = [int(s) for s in cfg["shape_xyz"]]
    affine = brats_affine(shape_xyz)
    case_grades = grades(cfg, seed)
    rows = []
    for i, (case, grade) in enumerate(case_grades.items(), start=1):
        rng = np.random.default_rng([seed, i])
        images, seg = make_case(rng, grade, shape_xyz, cfg["blank_slices"], cfg["bias_strength"], cfg["noise"])
        for mod, data in images.items():
            write_nifti(data, affine, out / case / f"{case}_{mod}.nii")
        write_nifti(seg, affine, out / case / f"{case}_seg.nii")
        rows.append(
            {
                "Grade": grade,
                "BraTS_2017_subject_ID": f"Brats17_SYN_{i:03d}_1",
                "BraTS_2018_subject_ID": f"Brats18_SYN_{i:03d}_1",
                "TCGA_TCIA_subject_ID": "NA",
                "BraTS_2019_subject_ID": f"BraTS19_SYN_{i:03d}_1",
                "BraTS_2020_subject_ID": case,
            }
        )
        log.info("%s: %s", case, grade)
    with io.atomic_path(out / NAME_MAPPING) as tmp:
        pd.DataFrame(rows, columns=list(MAPPING_COLUMNS)).to_csv(tmp, index=False)
    return list(case_grades)

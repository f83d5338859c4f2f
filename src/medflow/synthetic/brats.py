"""Synthetic BraTS training data in the public layout of a release, deterministic from a seed.

The release (``medflow.ingest.releases``) fixes the layout: its folder (``raw_subdir``, given by the
workflow as ``out_dir``), case ids (``case_format``), file names (``file_name``: 2020
``BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii``, 2023-GLI
``BraTS-GLI-NNNNN-TTT/BraTS-GLI-NNNNN-TTT-{t2f,t1n,t1c,t2w,seg}.nii.gz``), segmentation labels
(``from_stored``) and the grade file (2020's ``name_mapping.csv``; none where a release has no grades).
Files: int16 modalities, uint8 segmentation, 1 mm voxels, a BraTS-like affine.

Each case is a skull-stripped, brain-like ellipsoid (white matter, a folded grey-matter cortex,
ventricles and a midline fissure of CSF) with blank axial slices at both ends, a tumour and an
independent smooth multiplicative bias field per modality. Tumour parts: necrotic / non-enhancing
core, oedema, enhancing tumour (stored 1, 2, 3; written in the release's labels, e.g. 2020's 1, 2, 4).
Contrasts follow clinical MR: oedema bright in FLAIR and T2, enhancing tumour bright in T1ce, CSF dark
in FLAIR and T1, bright in T2. Grades differ as a CNN can see on axial slices: HGG tumours are larger,
with a T1ce-bright enhancing ring around a necrotic centre; LGG tumours are smaller, with a homogeneous
non-enhancing core and (mostly) no enhancement. Releases without a grade file still get both kinds of
tumour (the grade is drawn per patient and not written).

Where a release has several cases per patient (``patient_pattern``: 2023-GLI time points ``-000``,
``-001``), every third patient has a second time point, so ``n_cases`` cases come from fewer patients.

Config (``synthetic.brats``): ``release`` (a name in ``releases.RELEASES``), ``n_cases``,
``hgg_fraction`` (of patients), ``shape_xyz`` (NIfTI order, real files are 240 x 240 x 155),
``blank_slices`` [min, max] per end, ``bias_strength`` (max |log field|), ``noise`` (sd relative to
white matter), ``predict: {n_cases}`` (the unlabeled set below).

The unlabeled set (``generate_predict``, rule ``synthetic_brats_predict``) is the release's validation
download: case folders with the four modalities and no segmentation, e.g. 2020's
``MICCAI_BraTS2020_ValidationData/BraTS20_Validation_NNN/BraTS20_Validation_NNN_{flair,t1,t1ce,t2}.nii``
(``Release.validation_case``: releases whose validation ids look like training ones are numbered after
the training cases, so no id names two different cases). Same image model, its own random draws.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medflow.ingest import releases
from medflow.ingest.brats import MODALITIES
from medflow.ingest.releases import KINDS, STORED, Release

log = logging.getLogger(__name__)
# The default release (a frozen dataclass, safe as an argument default): callers that name none get 2020.
DEFAULT_RELEASE = releases.get("2020")

TISSUES = ("csf", "gm", "wm", "ncr", "net", "ed", "et")
# Mean intensity of each tissue per modality, relative to white matter in T1 (arbitrary MR units).
CONTRAST = {
    "flair": {"csf": 0.15, "gm": 0.80, "wm": 0.60, "ncr": 0.55, "net": 1.10, "ed": 1.45, "et": 0.95},
    "t1": {"csf": 0.25, "gm": 0.65, "wm": 0.90, "ncr": 0.30, "net": 0.50, "ed": 0.55, "et": 0.70},
    "t1ce": {"csf": 0.25, "gm": 0.65, "wm": 0.90, "ncr": 0.25, "net": 0.50, "ed": 0.55, "et": 1.70},
    "t2": {"csf": 1.50, "gm": 0.85, "wm": 0.55, "ncr": 1.35, "net": 1.20, "ed": 1.20, "et": 0.90},
}
SCALE = {"flair": 450, "t1": 600, "t1ce": 700, "t2": 900}  # int16 units of white matter-ish tissue
# The grade file's columns before the release's own id column (``Release.grade_id_column``), as in
# 2020's name_mapping.csv: the grade, then the case's ids in earlier releases.
MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
)
DEFAULTS = {
    "release": "2020",
    "n_cases": 24,
    "hgg_fraction": 0.5,
    "shape_xyz": [64, 64, 48],
    "blank_slices": [2, 5],
    "bias_strength": 0.3,
    "noise": 0.03,
    "predict": {"n_cases": 4},
}


def _cfg(cfg: dict) -> dict:
    return {**DEFAULTS, **(cfg or {})}


def release_of(cfg: dict) -> Release:
    """The release the synthetic copy is written in (``cfg["release"]``, default 2020)."""
    return releases.get(_cfg(cfg)["release"])


def _patients(cfg: dict) -> list[list[str]]:
    """Case ids grouped by patient, in order: patient ``j`` (from 0) has number ``j + 1`` and, where the
    release has several cases per patient, a second time point when ``j % 3 == 2``; cut at ``n_cases``.
    Pure string work: the workflow calls it while planning."""
    release = release_of(cfg)
    n = int(_cfg(cfg)["n_cases"])
    time_points = (1, 1, 2) if release.patient_pattern is not None else (1,)
    patients: list[list[str]] = []
    total = 0
    while total < n:
        j = len(patients)
        k = min(time_points[j % len(time_points)], n - total)
        patients.append([release.case_format.format(i=j + 1, t=t) for t in range(k)])
        total += k
    return patients


def case_ids(cfg: dict) -> list[str]:
    """Case ids of the synthetic copy (``cfg`` = ``config["synthetic"]["brats"]``), in the release's
    ``case_format``; the ids for ``n`` cases are the first ``n`` of those for more. No file access."""
    return [case for cases in _patients(cfg) for case in cases]


def expected_outputs(cfg: dict, raw_dir: str | os.PathLike) -> list[str]:
    """Every file ``generate(cfg, raw_dir, seed)`` writes (the rule's outputs): each case's five NIfTI
    files in the release's names, then the grade file where the release has one."""
    release = release_of(cfg)
    raw = str(raw_dir)
    out = [os.path.join(raw, case, release.file_name(case, kind)) for case in case_ids(cfg) for kind in KINDS]
    if release.has_grades:
        out.append(os.path.join(raw, release.grade_file))
    return out


def grades(cfg: dict, seed: int) -> dict[str, str]:
    """{case: HGG | LGG}: round(hgg_fraction * patients) HGG patients, shuffled by ``seed``; every time
    point of a patient has the patient's grade (with one case per patient: round(hgg_fraction * n) cases)."""
    cfg = _cfg(cfg)
    patients = _patients(cfg)
    n_hgg = int(round(cfg["hgg_fraction"] * len(patients)))
    labels = np.array(["HGG"] * n_hgg + ["LGG"] * (len(patients) - n_hgg))
    np.random.default_rng([seed, 2020]).shuffle(labels)  # 2020: a fixed salt, whatever the release
    return {case: grade for cases, grade in zip(patients, labels.tolist()) for case in cases}


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
    *,
    release: Release = DEFAULT_RELEASE,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: ({modality: int16 (X, Y, Z)}, seg uint8 (X, Y, Z) in ``release``'s labels, e.g. 2020's
    0/1/2/4); the images do not depend on the release.

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
    ncr, ed, et = (STORED[part] for part in ("necrotic", "edema", "enhancing"))  # built in stored labels
    seg[d <= r_ed] = ed
    if hgg:
        r_core = r_ed * rng.uniform(0.60, 0.72)
        seg[d <= r_core] = et
        seg[d <= r_core * rng.uniform(0.45, 0.60)] = ncr
        core_tissue = {et: "et", ncr: "ncr"}
    else:
        seg[d <= r_ed * rng.uniform(0.45, 0.60)] = ncr
        core_tissue = {ncr: "net", et: "et"}
        if rng.random() < 0.15:  # a few LGG show a small enhancing focus
            seg[d <= r_ed * 0.15] = et
    seg[~brain] = 0
    tissue[seg == ed] = TISSUES.index("ed")
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
    return images, np.ascontiguousarray(release.from_stored(seg).transpose(2, 1, 0))


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
    """Write every case and, where the release has one, its grade file under ``out_dir`` (the release's
    ``raw_subdir`` folder); exactly the files of ``expected_outputs``. Returns the case ids. The k-th case's
    (from 1) content depends only on (seed, k), its grade and the release."""
    import pandas as pd

    from medflow import io

    cfg = _cfg(cfg)
    release = release_of(cfg)
    out = Path(out_dir)
    shape_xyz = [int(s) for s in cfg["shape_xyz"]]
    affine = brats_affine(shape_xyz)
    case_grades = grades(cfg, seed)
    rows = []
    for i, (case, grade) in enumerate(case_grades.items(), start=1):
        rng = np.random.default_rng([seed, i])
        images, seg = make_case(
            rng, grade, shape_xyz, cfg["blank_slices"], cfg["bias_strength"], cfg["noise"], release=release
        )
        for mod, data in images.items():
            write_nifti(data, affine, out / case / release.file_name(case, mod))
        write_nifti(seg, affine, out / case / release.file_name(case, "seg"))
        # Made-up ids of the case in earlier releases, as 2020's name_mapping.csv lists them.
        earlier = (f"Brats17_SYN_{i:03d}_1", f"Brats18_SYN_{i:03d}_1", "NA", f"BraTS19_SYN_{i:03d}_1")
        rows.append([grade, *earlier, case])
        log.info("%s: %s", case, grade)
    if release.has_grades:
        with io.atomic_path(out / release.grade_file) as tmp:
            pd.DataFrame(rows, columns=[*MAPPING_COLUMNS, release.grade_id_column]).to_csv(tmp, index=False)
    return list(case_grades)


def _predict_cases(cfg: dict) -> list[tuple[int, str]]:
    """(number, case id) of the unlabeled cases: validation case k (from 1) is number k of a release with
    its own validation ids, number n_cases + k of one whose validation ids look like training ones."""
    cfg = _cfg(cfg)
    release = release_of(cfg)
    n = int({**DEFAULTS["predict"], **(cfg.get("predict") or {})}["n_cases"])
    offset = 0 if release.validation_format else int(cfg["n_cases"])
    return [(offset + k, release.validation_case(offset + k)) for k in range(1, n + 1)]


def predict_case_ids(cfg: dict) -> list[str]:
    """Case ids of the synthetic unlabeled set (``cfg`` = ``config["synthetic"]["brats"]``). No file access."""
    return [case for _, case in _predict_cases(cfg)]


def predict_expected_outputs(cfg: dict, out_dir: str | os.PathLike) -> list[str]:
    """Every file ``generate_predict(cfg, out_dir, seed)`` writes: each case's four modalities."""
    release = release_of(cfg)
    return [
        os.path.join(str(out_dir), case, release.file_name(case, mod))
        for case in predict_case_ids(cfg)
        for mod in MODALITIES
    ]


def generate_predict(cfg: dict, out_dir: str | os.PathLike, seed: int) -> list[str]:
    """Write the unlabeled set under ``out_dir`` (the release's ``validation_subdir`` folder): exactly the
    files of ``predict_expected_outputs``, the four modalities of each case, no segmentation, no grade
    file. Cases alternate HGG / LGG tumours; case number ``i``'s content depends only on (seed, i), the
    grade and the image parameters, and differs from the training case of the same number. Returns the ids."""
    cfg = _cfg(cfg)
    release = release_of(cfg)
    out = Path(out_dir)
    shape_xyz = [int(s) for s in cfg["shape_xyz"]]
    affine = brats_affine(shape_xyz)
    cases = _predict_cases(cfg)
    for k, (i, case) in enumerate(cases):
        grade = ("HGG", "LGG")[k % 2]
        rng = np.random.default_rng([seed, i, 2])  # the extra word: other draws than training case i's
        images, _ = make_case(
            rng, grade, shape_xyz, cfg["blank_slices"], cfg["bias_strength"], cfg["noise"], release=release
        )
        for mod, data in images.items():
            write_nifti(data, affine, out / case / release.file_name(case, mod))
        log.info("%s: unlabeled (%s-like tumour)", case, grade)
    return [case for _, case in cases]

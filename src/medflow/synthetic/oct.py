"""Synthetic retinal OCT B-scans in the Kermany OCT2017 layout.

``OCT2017/{train,val,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg``: greyscale JPEGs of
varying size, several images per patient (a patient belongs to one split, as the data set intends).
As in the real download, some patients (``multi_class`` of each split's patients) have images in two
class folders of their split, e.g. ``CNV-1234567-1.jpeg`` and ``DME-1234567-1.jpeg`` (``n`` counts
from 1 per patient and class); a split that is carved by class-specific ids would leak them.
Each image is a layered retina (bright nerve-fibre layer, dark nuclear layers, bright RPE line, choroid
below) with speckle, tilt and curvature, plus the finding of its class:

- CNV: a large dome under the retina (neovascular membrane) with dark subretinal fluid above it;
- DME: a thickened retina with dark intraretinal fluid cysts;
- DRUSEN: several small bumps of the RPE;
- NORMAL: smooth layers with a foveal pit.

Everything is deterministic from the seed; images of one patient share their size (and, within a
class, their geometry).

``generate_predict`` writes the demo's unlabeled scans to predict on (``synthetic.oct.predict``): loose scans
of every class named ``scan_NNN`` (no class in the name) in a small folder tree, JPEG and PNG, greyscale and
RGB, plus one truncated JPEG and one text file that the prediction must exclude with their reasons.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
SPLITS = ("train", "val", "test")

DEFAULTS = {
    "patients": {"train": 24, "val": 3, "test": 8},  # per class
    "images_per_patient": [1, 4],
    "height": [72, 120],  # pixels, drawn per patient
    "aspect": [1.0, 1.5],  # width / height, drawn per patient (real: 512 x 496 mostly, some up to 3:1)
    "jpeg_quality": 90,
    "multi_class": 0.25,  # share of each split's patients with images in a second class (as real ones can)
    "predict": {"n_images": 24},  # readable unlabeled scans of generate_predict (its two bad files come on top)
}
# Folders of the unlabeled tree, cycled through: the top level, one and two levels down.
PREDICT_FOLDERS = ("", "clinic_a", "clinic_b/visit_1", "clinic_b/visit_2")
BAD_FILES = ("clinic_b/visit_2/scan_truncated.jpeg", "clinic_b/notes.txt")


def settings(cfg: Mapping | None) -> dict:
    """``synthetic.oct`` config merged over the defaults."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in (cfg or {}).items():
        if k in ("patients", "predict"):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _patient_geometry(rng: np.random.Generator, cls: str, height: tuple[int, int], aspect: tuple[float, float]) -> dict:
    """What all images of one patient share: size, retina position/thickness and the lesion layout.
    Lesions lie around the centre (the macula), where scans are centred."""
    h = int(rng.integers(height[0], height[1] + 1))
    w = int(round(h * rng.uniform(aspect[0], aspect[1])))
    geo = {
        "w": w,
        "h": h,
        "top": rng.uniform(0.25, 0.38),  # inner retinal surface, fraction of height
        "thick": rng.uniform(0.22, 0.28) * (1.45 if cls == "DME" else 1.0),
        "tilt": rng.uniform(-0.08, 0.08),
        "curve": rng.uniform(-0.06, 0.1),
        "fovea": rng.uniform(0.35, 0.65),
        "pit": rng.uniform(0.03, 0.07) * (0.4 if cls == "DME" else 1.0),
        "gain": rng.uniform(0.8, 1.15),
    }
    if cls == "CNV":
        geo["lesions"] = [
            (rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.2), rng.uniform(0.12, 0.2))
        ]  # x, half-width, height
    elif cls == "DRUSEN":
        n = int(rng.integers(3, 7))
        xs = np.sort(rng.uniform(0.2, 0.8, n))
        geo["lesions"] = [(x, rng.uniform(0.035, 0.06), rng.uniform(0.06, 0.1)) for x in xs]
    elif cls == "DME":
        n = int(rng.integers(3, 7))
        geo["lesions"] = [
            (rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.75), rng.uniform(0.04, 0.08), rng.uniform(0.5, 0.9))
            for _ in range(n)
        ]  # x, depth in retina, radius (fraction of width), aspect
    else:
        geo["lesions"] = []
    return geo


def _layer_profile(d: np.ndarray) -> np.ndarray:
    """Reflectivity (0..1) at relative depth ``d`` in the retina (0 inner surface, 1 RPE)."""
    knots = np.array([0.0, 0.06, 0.15, 0.3, 0.42, 0.5, 0.62, 0.8, 0.88, 0.93, 1.0])
    value = np.array([0.85, 0.7, 0.5, 0.55, 0.22, 0.45, 0.18, 0.2, 0.75, 0.4, 0.95])
    return np.interp(d, knots, value)


def render(geo: Mapping, cls: str, rng: np.random.Generator) -> np.ndarray:
    """One B-scan, uint8 (H, W). ``rng`` draws the per-image jitter and the speckle."""
    w, h = geo["w"], geo["h"]
    x = np.linspace(0.0, 1.0, w)
    shift = rng.uniform(-0.03, 0.03)
    tilt = geo["tilt"] + rng.uniform(-0.02, 0.02)
    top = geo["top"] + shift + tilt * (x - 0.5) + geo["curve"] * (x - 0.5) ** 2
    rpe = top + geo["thick"]
    top = top + geo["pit"] * np.exp(-(((x - geo["fovea"]) / 0.07) ** 2)) * (0.0 if cls == "CNV" else 1.0)
    lift = np.zeros(w)
    for les in geo["lesions"] if cls in ("CNV", "DRUSEN") else []:
        cx, hw, ht = les[0] + rng.uniform(-0.02, 0.02), les[1], les[2]
        lift = np.maximum(lift, ht * np.clip(1 - ((x - cx) / hw) ** 2, 0, None) ** (0.5 if cls == "CNV" else 0.8))
    base_rpe = rpe.copy()
    rpe = rpe - lift
    if cls == "CNV":
        top = top - 0.8 * lift  # the membrane pushes the whole retina up
    y = np.linspace(0.0, 1.0, h)[:, None]
    d = (y - top[None, :]) / (rpe - top)[None, :]
    img = np.where((d >= 0) & (d <= 1), _layer_profile(np.clip(d, 0, 1)), 0.0)
    img += np.where(d < 0, 0.04, 0.0)  # vitreous
    below = y - rpe[None, :]
    below_bruch = y - base_rpe[None, :]  # the choroid stays under Bruch's membrane, not the lifted RPE
    img += 0.45 * np.exp(-np.clip(below_bruch, 0, None) / 0.12) * (below_bruch > 0)
    rpe_line = np.exp(-((below * h / 1.6) ** 2))
    img = np.maximum(img, 0.95 * rpe_line)
    if cls == "CNV":
        # Heterogeneous bright membrane between the lifted RPE and Bruch's membrane, dark fluid above it.
        under = (y > rpe[None, :]) & (y < base_rpe[None, :])
        img = np.where(under, 0.6 + 0.25 * rng.random((h, w)), img)
        fluid = (d > 0.78) & (d < 0.97) & (lift[None, :] > 0.03)
        img = np.where(fluid, 0.05, img)
    elif cls == "DRUSEN":
        under = (y > rpe[None, :]) & (y < base_rpe[None, :])
        img = np.where(under, 0.7, img)  # drusen material: moderately reflective
    elif cls == "DME":
        yy = y * h
        xx = x[None, :] * w
        for cx, depth, r, aspect in geo["lesions"]:
            cxp = (cx + rng.uniform(-0.02, 0.02)) * w
            col = int(np.clip(cxp, 0, w - 1))
            cy = (top[col] + depth * (rpe[col] - top[col])) * h
            rad = r * w * rng.uniform(0.85, 1.15)
            cyst = ((xx - cxp) / rad) ** 2 + ((yy - cy) / (rad * aspect)) ** 2 < 1
            img = np.where(cyst, 0.03, img)
    # Multiplicative speckle (gamma, mean 1) and a little additive noise, as in OCT.
    speckle = rng.gamma(4.0, 0.25, size=(h, w))
    img = img * speckle * geo["gain"] * rng.uniform(0.9, 1.1) + rng.normal(0, 0.03, size=(h, w))
    return np.clip(img * 230, 0, 255).astype(np.uint8)


def _patient_ids(rng: np.random.Generator, n: int) -> list[int]:
    """Unique 7-digit ids, like the data set's (e.g. CNV-1016042-1.jpeg)."""
    return sorted(int(v) for v in rng.choice(np.arange(1_000_000, 9_999_999), size=n, replace=False))


def _write(folder: Path, cls: str, pid: int, geo: Mapping, rng: np.random.Generator, n_img: int, s: Mapping) -> int:
    """Write ``<cls>-<pid>-1.jpeg`` .. ``-<n_img>.jpeg`` into ``folder``; return how many."""
    for n in range(1, n_img + 1):
        img = render(geo, cls, rng)
        Image.fromarray(img, mode="L").save(folder / f"{cls}-{pid}-{n}.jpeg", quality=int(s["jpeg_quality"]))
    return n_img


def generate(root: str | os.PathLike, cfg: Mapping | None, seed: int) -> dict[str, int]:
    """Write the synthetic OCT2017 tree at ``root`` (replaced if present); return image counts per split.

    The tree is built beside ``root`` and renamed into place, so a killed job leaves no partial tree.
    """
    s = settings(cfg)
    root = Path(root)
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng([seed, 0x0C7])
    n_patients = sum(int(s["patients"][sp]) for sp in SPLITS) * len(CLASSES)
    ids = iter(rng.permutation(_patient_ids(rng, n_patients)).tolist())
    counts = {sp: 0 for sp in SPLITS}
    lo, hi = (int(v) for v in s["images_per_patient"])
    pick = np.random.default_rng([seed, 0x0C7, 1])  # who spans classes: apart from the ids and the images
    for split in SPLITS:
        for cls in CLASSES:
            (tmp / split / cls).mkdir(parents=True, exist_ok=True)
        patients = [(next(ids), cls) for cls in CLASSES for _ in range(int(s["patients"][split]))]
        n_multi = min(len(patients), math.ceil(float(s["multi_class"]) * len(patients)))
        extra = set(pick.choice(len(patients), size=n_multi, replace=False).tolist()) if n_multi else set()
        for j, (pid, cls) in enumerate(patients):
            prng = np.random.default_rng([seed, pid])
            geo = _patient_geometry(prng, cls, s["height"], s["aspect"])
            n_img = int(prng.integers(lo, hi + 1))
            if j in extra:
                # The patient's images are shared between its class and one other (about the same total).
                other = CLASSES[(CLASSES.index(cls) + int(pick.integers(1, len(CLASSES)))) % len(CLASSES)]
                n_img = max(n_img, 2)
                n_other = n_img // 2
                orng = np.random.default_rng([seed, pid, CLASSES.index(other)])
                ogeo = {**_patient_geometry(orng, other, s["height"], s["aspect"]), "w": geo["w"], "h": geo["h"]}
                counts[split] += _write(tmp / split / other, other, pid, ogeo, orng, n_other, s)
                n_img -= n_other
            counts[split] += _write(tmp / split / cls, cls, pid, geo, prng, n_img, s)
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return counts


def generate_predict(root: str | os.PathLike, cfg: Mapping | None, seed: int) -> dict[str, int]:
    """Write the unlabeled scans at ``root`` (replaced if present, renamed into place); return counts.

    ``cfg``: the ``synthetic.oct`` block (its ``predict.n_images`` and the image size/quality settings).
    Scan ``i`` (``scan_001`` ..) shows class ``i mod 4`` from a patient of its own (a seed stream apart from
    the training tree's), lies in ``PREDICT_FOLDERS[(i // 4) mod 4]``, is a PNG every third scan (else a JPEG) and
    RGB every second one (grey channels with a faint tint, as colour exports of OCT viewers). ``BAD_FILES``:
    a JPEG cut to its first 300 bytes and a text file. Counts: ``jpeg``, ``png``, ``rgb``, ``bad``.
    """
    s = settings(cfg)
    n = int(s["predict"]["n_images"])
    root = Path(root)
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"jpeg": 0, "png": 0, "rgb": 0, "bad": len(BAD_FILES)}
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        rng = np.random.default_rng([seed, 0x0C7, 2, i])
        grey = render(_patient_geometry(rng, cls, s["height"], s["aspect"]), cls, rng)
        png, rgb = i % 3 == 2, i % 2 == 1
        if rgb:
            tint = np.array([1.0, 0.96, 0.9])
            image = Image.fromarray(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8), mode="RGB")
        else:
            image = Image.fromarray(grey, mode="L")
        folder = tmp / PREDICT_FOLDERS[(i // len(CLASSES)) % len(PREDICT_FOLDERS)]  # each folder: every class
        folder.mkdir(parents=True, exist_ok=True)
        name = f"scan_{i + 1:03d}.{'png' if png else 'jpeg'}"
        image.save(folder / name, **({} if png else {"quality": int(s["jpeg_quality"])}))
        counts["png" if png else "jpeg"] += 1
        counts["rgb"] += int(rgb)
    truncated, text = (tmp / f for f in BAD_FILES)
    for path in (truncated, text):
        path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    rng = np.random.default_rng([seed, 0x0C7, 3])
    Image.fromarray(render(_patient_geometry(rng, "CNV", s["height"], s["aspect"]), "CNV", rng), mode="L").save(
        buf, format="JPEG", quality=int(s["jpeg_quality"])
    )
    truncated.write_bytes(buf.getvalue()[:300])  # a copy cut short: the header reads, the pixels do not
    text.write_text("Scans of visit 1 and 2; exported from the OCT viewer.\n")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return counts

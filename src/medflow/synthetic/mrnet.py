"""Synthetic MRNet-v1.0 download, in the public layout::

    <root>/{train,valid}/{axial,coronal,sagittal}/NNNN.npy   uint8, (slices, 256, 256)
    <root>/{train,valid}-{abnormal,acl,meniscus}.csv         no header: NNNN,label

Every exam is one 3D knee phantom (femur and tibia with cortex, marrow and cartilage, menisci at the
joint line, ACL and PCL in the notch, patella, soft tissue) sampled in three planes, each with its own
slice count, so a finding lies at the same anatomical place in all planes of an exam:

- ACL tear: the ligament thickened and bright, with an oedema blob in the intercondylar notch;
- meniscal tear: bright signal in the posterior horn of the medial or lateral meniscus;
- other abnormal findings (also alongside the two above): a bone bruise in a condyle or the tibial
  plateau, or a joint effusion in the suprapatellar pouch.

Labels follow the real data: abnormal is about 80 % positive, ACL about 20 %, meniscus about 35 %,
and every ACL or meniscus positive is abnormal. Exam ids run on from train to valid, as in the real
set (0000-1129 train, 1130-1249 valid). Deterministic from ``seed``: each exam draws from its own
generator, so an exam does not change when others are added.

``generate_new`` writes the unlabeled set the demo predicts on (``predict: {n_exams}``): new exams in the
download's layout without labels, ``<folder>/{axial,coronal,sagittal}/NNNN.npy``, their ids running on after
the valid exams' (as the challenge's hidden test exams do), their findings drawn with the same prevalence.

Coordinates are normalised to [-1, 1]: x medial-lateral, y posterior(-)-anterior(+), z inferior(-)-
superior(+). Axial slices stack along z, coronal along y, sagittal along x.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medflow import io
from medflow.ingest.mrnet import PLANES, TASKS

SPLITS = ("train", "valid")
SIZE = 256  # in-plane size of the public arrays
RENDER = 128  # phantoms are drawn at this size and interpolated to SIZE (MRI is interpolated too)
SLICE_RANGE = 0.65  # slices cover [-SLICE_RANGE, SLICE_RANGE] of their axis: the knee joint

DEFAULTS: dict[str, Any] = {
    "n_train": 64,
    "n_valid": 40,
    "slices": [5, 9],  # min and max slices per exam and plane (real data: about 17 to 61)
    "prevalence": {"abnormal": 0.8, "acl": 0.2, "meniscus": 0.35},
    "other_findings": 0.5,  # P(bone bruise or effusion as well) for ACL/meniscus positives
    "noise": 6.0,  # grey levels of the Rician noise
    "predict": {"n_exams": 12},  # the unlabeled new exams (generate_new)
}


def settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic.mrnet keys: {sorted(unknown)}")
    out = {**DEFAULTS, **cfg}
    out["prevalence"] = {**DEFAULTS["prevalence"], **dict(cfg.get("prevalence", {}))}
    out["predict"] = {**DEFAULTS["predict"], **dict(cfg.get("predict", {}))}
    if set(out["predict"]) != set(DEFAULTS["predict"]) or int(out["predict"]["n_exams"]) < 1:
        raise ValueError(f"synthetic.mrnet.predict must be {{n_exams: >= 1}}, got {cfg.get('predict')}")
    if out["slices"][0] < 1 or out["slices"][0] > out["slices"][1]:
        raise ValueError(f"synthetic.mrnet.slices must be [min, max] with 1 <= min <= max, got {out['slices']}")
    return out


def exam_ids(cfg: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Split -> four-digit exam ids; valid ids continue after the train ids."""
    c = settings(cfg)
    n_train, n_valid = int(c["n_train"]), int(c["n_valid"])
    return {
        "train": [f"{i:04d}" for i in range(n_train)],
        "valid": [f"{i:04d}" for i in range(n_train, n_train + n_valid)],
    }


def draw_labels(cfg: Mapping[str, Any] | None, seed: int) -> dict[str, dict[str, dict[str, int]]]:
    """split -> task -> exam id -> 0/1, with the configured prevalence met exactly per split (at least
    one positive and one negative each), ACL and meniscus positives drawn among the abnormal exams."""
    c = settings(cfg)
    return {
        split: _draw(ids, c["prevalence"], np.random.default_rng([seed, 1, code]))
        for code, (split, ids) in enumerate(exam_ids(c).items())
    }


def _draw(ids: list[str], prev: Mapping[str, float], rng: np.random.Generator) -> dict[str, dict[str, int]]:
    """task -> exam id -> 0/1 for one set of exams, the prevalence met exactly (both classes where n > 1)."""
    n = len(ids)

    def count(p: float) -> int:
        return int(min(max(round(p * n), 1), max(n - 1, 1)))

    order = rng.permutation(n)
    abnormal = set(order[: count(prev["abnormal"])].tolist())
    ab_list = sorted(abnormal)
    acl = set(rng.choice(ab_list, size=min(count(prev["acl"]), len(ab_list)), replace=False).tolist())
    men = set(rng.choice(ab_list, size=min(count(prev["meniscus"]), len(ab_list)), replace=False).tolist())
    return {
        "abnormal": {e: int(i in abnormal) for i, e in enumerate(ids)},
        "acl": {e: int(i in acl) for i, e in enumerate(ids)},
        "meniscus": {e: int(i in men) for i, e in enumerate(ids)},
    }


def new_exam_ids(cfg: Mapping[str, Any] | None) -> list[str]:
    """Four-digit ids of the new (unlabeled) exams: after the train and valid exams'."""
    c = settings(cfg)
    start = int(c["n_train"]) + int(c["n_valid"])
    return [f"{i:04d}" for i in range(start, start + int(c["predict"]["n_exams"]))]


def new_exam_labels(cfg: Mapping[str, Any] | None, seed: int) -> dict[str, dict[str, int]]:
    """task -> new exam id -> 0/1: the findings drawn into the new exams, which no file records."""
    c = settings(cfg)
    return _draw(new_exam_ids(c), c["prevalence"], np.random.default_rng([seed, 1, len(SPLITS)]))


# --- the phantom -------------------------------------------------------------------------------


def _smoothstep(d: np.ndarray, edge: float = 0.08) -> np.ndarray:
    """1 inside (d < 1 - edge), 0 outside (d > 1 + edge), smooth between: soft-edged masks."""
    t = np.clip((1.0 + edge - d) / (2 * edge), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class Ellipsoid:
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    value: float
    texture: float = 0.0  # amplitude of a mottled pattern (bone bruise)
    grow: float = 0.0  # added to every radius (cortex/cartilage shells around a structure)

    def bbox(self) -> np.ndarray:
        r = np.asarray(self.radii) + self.grow
        return np.stack([np.asarray(self.centre) - r * 1.1, np.asarray(self.centre) + r * 1.1])

    def alpha(self, x, y, z) -> np.ndarray:
        (cx, cy, cz), (rx, ry, rz) = self.centre, np.asarray(self.radii) + self.grow
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
        return _smoothstep(d)


@dataclass
class Rod:
    """A ligament or tendon: points within ``radius`` of the segment a-b."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float
    value: float
    texture: float = 0.0

    def bbox(self) -> np.ndarray:
        a, b = np.asarray(self.a), np.asarray(self.b)
        return np.stack([np.minimum(a, b) - self.radius * 1.2, np.maximum(a, b) + self.radius * 1.2])

    def alpha(self, x, y, z) -> np.ndarray:
        a, v = np.asarray(self.a), np.asarray(self.b) - np.asarray(self.a)
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * v[0] + py * v[1] + pz * v[2]) / float(v @ v), 0, 1)
        d = np.sqrt((px - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (pz - t * v[2]) ** 2) / self.radius
        return _smoothstep(d, 0.15)


@dataclass
class Column:
    """An elliptic cylinder along z (leg envelope, bone shafts, tibial plateau) between z0 and z1."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    z0: float
    z1: float
    value: float
    grow: float = 0.0
    taper: float = 0.0  # radii shrink by this fraction towards z0 (the tibial shaft)
    texture: float = 0.0

    def bbox(self) -> np.ndarray:
        r = np.asarray(self.radii) + self.grow
        c = np.asarray(self.centre)
        return np.array([[*(c - r * 1.1), self.z0 - self.grow - 0.05], [*(c + r * 1.1), self.z1 + self.grow + 0.05]])

    def alpha(self, x, y, z) -> np.ndarray:
        frac = np.clip((z - self.z0) / max(self.z1 - self.z0, 1e-6), 0, 1)
        scale = 1.0 - self.taper * (1.0 - frac)
        rx, ry = (self.radii[0] * scale + self.grow), (self.radii[1] * scale + self.grow)
        d = np.sqrt(((x - self.centre[0]) / rx) ** 2 + ((y - self.centre[1]) / ry) ** 2)
        zmask = _smoothstep(np.abs(z - (self.z0 + self.z1) / 2) / ((self.z1 - self.z0) / 2 + self.grow), 0.03)
        return _smoothstep(d, 0.04) * zmask


@dataclass
class Knee:
    """One exam: anatomy with per-exam jitter, findings painted over it, intensity settings."""

    shapes: list = field(default_factory=list)
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    gain: float = 1.0
    texture_k: np.ndarray = field(default_factory=lambda: np.zeros((4, 3)))
    texture_phase: np.ndarray = field(default_factory=lambda: np.zeros(4))

    def render(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Grey levels (float, about 0-255) at points x, y, z (arrays of one shape, normalised coords)."""
        x = (x - self.offset[0]) / self.scale
        y = (y - self.offset[1]) / self.scale
        z = (z - self.offset[2]) / self.scale
        img = np.zeros(x.shape, dtype=np.float32)
        lo = np.array([x.min(), y.min(), z.min()])
        hi = np.array([x.max(), y.max(), z.max()])
        tex = None
        for s in self.shapes:
            box = s.bbox()
            if np.any(box[0] > hi) or np.any(box[1] < lo):
                continue  # the slice misses this structure: most do, which keeps drawing fast
            a = s.alpha(x, y, z).astype(np.float32)
            value = s.value
            if s.texture:
                if tex is None:
                    p = np.stack([x, y, z], -1)
                    tex = np.sin(p @ self.texture_k.T + self.texture_phase).mean(-1).astype(np.float32)
                value = s.value + s.texture * tex
            img = img * (1 - a) + value * a
        return img * self.gain


def make_knee(rng: np.random.Generator, labels: Mapping[str, int], other_findings: float) -> Knee:
    """Anatomy with small per-exam variation plus the findings the labels call for."""
    j = lambda s=0.02: float(rng.normal(0, s))  # noqa: E731
    med = 1 if rng.random() < 0.5 else -1  # which side is medial (left or right knee)
    shapes: list = []
    # Soft tissue: subcutaneous fat ring, then muscle/tendon inside.
    shapes += [Column((0, 0), (0.92, 0.86), -1.5, 1.5, 110), Column((0, 0), (0.8, 0.74), -1.5, 1.5, 70 + 8 * j(1))]
    # Femur: shaft above two condyles; cartilage, cortex, marrow drawn as nested shells.
    condyles = [((s * 0.24 + j(), -0.08 + j(), 0.26 + j()), (0.25, 0.33, 0.22)) for s in (-1, 1)]
    for grow, value, tex in ((0.045, 140, 0), (0.02, 15, 0), (0.0, 105, 12)):
        for c, r in condyles:
            shapes.append(Ellipsoid(c, r, value, texture=tex, grow=grow))
        shapes.append(Column((0, -0.05), (0.33, 0.3), 0.3, 1.6, value, grow=grow if grow < 0.04 else 0, texture=tex))
    # Tibia: plateau and shaft, cartilage on top.
    top = -0.1 + j()
    shapes.append(Column((0, -0.02), (0.56, 0.42), top - 0.04, top + 0.035, 140))
    for grow, value, tex in ((0.02, 15, 0), (0.0, 105, 12)):
        shapes.append(Column((0, -0.02), (0.56, 0.42), -1.6, top, value, grow=grow, taper=0.35, texture=tex))
    # Menisci: dark wedges at the joint line around each compartment (an outer ring minus an inner core).
    for s in (-1, 1):
        shapes.append(Ellipsoid((s * 0.27, -0.02, top + 0.07), (0.26, 0.38, 0.05), 22))
        shapes.append(Ellipsoid((s * 0.27, -0.02, top + 0.07), (0.17, 0.27, 0.06), 120))
    # Cruciate ligaments in the intercondylar notch, patella and patellar tendon in front.
    acl = ((-med * 0.07, -0.24, 0.16), (med * 0.02, 0.16, top + 0.03))
    shapes.append(Rod(acl[0], acl[1], 0.045, 25))
    shapes.append(Rod((med * 0.05, 0.04, 0.16), (0.0, -0.3, top - 0.02), 0.05, 25))
    shapes += [
        Ellipsoid((0, 0.6, 0.32), (0.2, 0.09, 0.17), 15, grow=0.02),
        Ellipsoid((0, 0.6, 0.32), (0.2, 0.09, 0.17), 100, texture=10),
    ]
    shapes.append(Rod((0, 0.64, 0.15), (0, 0.5, -0.35), 0.04, 20))

    # Findings, painted last.
    other = not labels["acl"] and not labels["meniscus"]
    if labels["abnormal"] and (other or rng.random() < other_findings):
        if rng.random() < 0.5:  # bone bruise in a femoral condyle or the tibial plateau
            cx = (1 if rng.random() < 0.5 else -1) * 0.25
            cz = 0.22 if rng.random() < 0.5 else top - 0.18
            shapes.append(Ellipsoid((cx + j(0.03), j(0.05), cz), (0.2, 0.2, 0.17), 150, texture=25))
        else:  # effusion distending the suprapatellar pouch
            shapes.append(Ellipsoid((j(), 0.4 + j(), 0.45 + j()), (0.42, 0.13, 0.28), 175))
    if labels["acl"]:
        shapes.append(Rod(acl[0], acl[1], 0.085, 205))
        mid = tuple((np.asarray(acl[0]) + np.asarray(acl[1])) / 2 + rng.normal(0, 0.02, 3))
        shapes.append(Ellipsoid(mid, (0.17, 0.17, 0.17), 240))
    if labels["meniscus"]:
        side = med if rng.random() < 0.7 else -med  # medial tears are the common ones
        shapes.append(Ellipsoid((side * 0.27 + j(), -0.3 + j(), top + 0.06), (0.17, 0.12, 0.13), 225))

    k = rng.normal(0, 9.0, (4, 3))
    return Knee(
        shapes,
        offset=rng.normal(0, 0.03, 3),
        scale=float(rng.uniform(0.95, 1.05)),
        gain=float(rng.uniform(0.93, 1.07)),
        texture_k=k,
        texture_phase=rng.uniform(0, 2 * np.pi, 4),
    )


def render_plane(knee: Knee, plane: str, n_slices: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(n_slices, 256, 256) uint8 of one plane. Rows run superior->inferior (coronal, sagittal) or
    anterior->posterior (axial), as radiologists view them."""
    pos = np.linspace(-SLICE_RANGE, SLICE_RANGE, n_slices) + rng.uniform(-0.03, 0.03)
    u = np.linspace(-1, 1, RENDER, dtype=np.float32)
    rows, cols = np.meshgrid(-u, u, indexing="ij")  # rows top to bottom: +1 -> -1
    out = np.empty((n_slices, SIZE, SIZE), dtype=np.uint8)
    for i, p in enumerate(pos):
        full = np.full_like(rows, p)
        if plane == "axial":
            img = knee.render(cols, rows, full)
        elif plane == "coronal":
            img = knee.render(cols, full, rows)
        else:
            img = knee.render(full, cols, rows)
        img = _upsample(img)
        n1, n2 = rng.standard_normal((2, *img.shape), dtype=np.float32) * noise
        img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise, as in MR images
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _upsample(img: np.ndarray) -> np.ndarray:
    """RENDER x RENDER -> SIZE x SIZE by bilinear interpolation."""
    from scipy import ndimage

    return ndimage.zoom(img, SIZE / img.shape[0], order=1, grid_mode=True, mode="nearest")


def make_exam(cfg: Mapping[str, Any], seed: int, exam_id: str, labels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """plane -> (slices, 256, 256) uint8 for one exam; slice counts differ per plane."""
    c = settings(cfg)
    rng = np.random.default_rng([seed, 2, int(exam_id)])
    knee = make_knee(rng, labels, float(c["other_findings"]))
    lo, hi = c["slices"]
    return {p: render_plane(knee, p, int(rng.integers(lo, hi + 1)), rng, float(c["noise"])) for p in PLANES}


def generate(cfg: Mapping[str, Any] | None, root: str | os.PathLike, seed: int) -> dict[str, int]:
    """Write the whole synthetic download under ``root`` (the MRNet-v1.0 folder); returns exams per split.

    Earlier synthetic exams under ``root`` are removed first, so a smaller config leaves no strays.
    The label CSVs are written last: they are what the workflow declares as outputs.
    """
    c = settings(cfg)
    root = Path(root)
    labels = draw_labels(c, seed)
    for split, ids in exam_ids(c).items():
        for plane in PLANES:
            d = root / split / plane
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        for e in ids:
            exam = make_exam(c, seed, e, {t: labels[split][t][e] for t in TASKS})
            for plane, arr in exam.items():
                with io.atomic_path(root / split / plane / f"{e}.npy") as tmp:
                    np.save(tmp, arr)
    for split in SPLITS:
        for task in TASKS:
            rows = "".join(f"{e},{y}\n" for e, y in labels[split][task].items())
            with io.atomic_path(root / f"{split}-{task}.csv") as tmp:
                tmp.write_text(rows)
    return {s: len(ids) for s, ids in exam_ids(c).items()}


def generate_new(cfg: Mapping[str, Any] | None, folder: str | os.PathLike, seed: int) -> int:
    """Write the new, unlabeled exams (``new_exam_ids``) as ``<folder>/{axial,coronal,sagittal}/NNNN.npy``, the
    layout ``medflow.ingest.mrnet.discover_new`` reads; returns how many. Earlier exams there are removed."""
    c = settings(cfg)
    folder = Path(folder)
    labels = new_exam_labels(c, seed)
    for plane in PLANES:
        shutil.rmtree(folder / plane, ignore_errors=True)
        (folder / plane).mkdir(parents=True)
    ids = new_exam_ids(c)
    for e in ids:
        for plane, arr in make_exam(c, seed, e, {t: labels[t][e] for t in TASKS}).items():
            with io.atomic_path(folder / plane / f"{e}.npy") as tmp:
                np.save(tmp, arr)
    return len(ids)

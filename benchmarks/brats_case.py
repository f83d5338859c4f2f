"""A real-size (240 x 240 x 155) synthetic BraTS case for the preprocessing benchmarks."""

from __future__ import annotations

import time

import numpy as np

from medflow.synthetic.brats import make_case

REAL_SHAPE_XYZ = (240, 240, 155)


def real_size_case(seed: int = 42, grade: str = "HGG", tumour_scale: float = 0.6):
    """({modality: int16 (X, Y, Z)}, seg uint8 (X, Y, Z), {modality: true bias field}) with BraTS-like
    blank slices and a real-sized tumour; prints its whole-tumour volume."""
    t = time.perf_counter()
    bias: dict = {}
    images, seg = make_case(
        np.random.default_rng([seed, 1]),
        grade,
        REAL_SHAPE_XYZ,
        blank_slices=(5, 12),
        bias_out=bias,
        tumour_scale=tumour_scale,
    )
    brain = images["t1"] > 0
    print(
        f"real-size synthetic {grade} case {REAL_SHAPE_XYZ} (X, Y, Z): brain {brain.sum() / 1000:.0f} cm3, "
        f"whole tumour {(seg > 0).sum() / 1000:.0f} cm3, enhancing {(seg == 4).sum() / 1000:.0f} cm3 "
        f"(made in {time.perf_counter() - t:.0f} s)"
    )
    return images, seg, bias

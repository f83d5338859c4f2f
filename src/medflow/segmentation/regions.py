"""BraTS labels and regions: the one place that defines them.

BraTS 2020 segmentations hold 0 (background), 1 (necrotic / non-enhancing tumour core, NCR/NET),
2 (peritumoural oedema, ED) and 4 (GD-enhancing tumour, ET). medflow stores label 4 as 3 so the
stored labels are contiguous (0..3); the model's three output channels are the stored labels 1, 2, 3
in that order (one-hot without the background channel).

The challenge scores three nested regions, written here in BraTS labels and in stored labels:

- WT (whole tumour)     = {1, 2, 4}  -> stored {1, 2, 3}
- TC (tumour core)      = {1, 4}     -> stored {1, 3}
- ET (enhancing tumour) = {4}        -> stored {3}
"""

from __future__ import annotations

import numpy as np

# Stored label -> BraTS label (index = stored value).
STORED_TO_BRATS = np.array([0, 1, 2, 4], dtype=np.uint8)
BRATS_LABELS = (1, 2, 4)
STORED_LABELS = (1, 2, 3)  # model output channel c predicts stored label c + 1

REGIONS_BRATS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
REGIONS_STORED: dict[str, tuple[int, ...]] = {
    name: tuple(int(np.flatnonzero(STORED_TO_BRATS == b)[0]) for b in labels) for name, labels in REGIONS_BRATS.items()
}
REGION_NAMES = tuple(REGIONS_BRATS)
# Per-label result keys, named for the BraTS label value (label_4 is the stored 3).
LABEL_NAMES = tuple(f"label_{b}" for b in BRATS_LABELS)
# Everything an evaluation reports on, in report order.
STRUCTURES = REGION_NAMES + LABEL_NAMES


def to_brats(stored: np.ndarray) -> np.ndarray:
    """Stored labels {0,1,2,3} -> BraTS labels {0,1,2,4} (uint8, same shape)."""
    stored = np.asarray(stored)
    if stored.size and (stored.min() < 0 or stored.max() > 3):
        raise ValueError(f"stored labels must lie in 0..3, got {np.unique(stored).tolist()}")
    return STORED_TO_BRATS[stored.astype(np.intp)]


def to_stored(brats: np.ndarray) -> np.ndarray:
    """BraTS labels {0,1,2,4} -> stored labels {0,1,2,3} (uint8, same shape)."""
    brats = np.asarray(brats)
    bad = np.setdiff1d(np.unique(brats), (0, *BRATS_LABELS))
    if bad.size:
        raise ValueError(f"BraTS labels must lie in {{0,1,2,4}}, got {bad.tolist()}")
    out = brats.astype(np.uint8, copy=True)
    out[brats == 4] = 3
    return out


def masks(stored):
    """Boolean masks of every structure in :data:`STRUCTURES` from a stored label map (any shape;
    numpy array or torch tensor, the masks are of the same kind)."""
    if isinstance(stored, np.ndarray) or not hasattr(stored, "device"):
        stored = np.asarray(stored)
        out = {name: np.isin(stored, labels) for name, labels in REGIONS_STORED.items()}
    else:
        import torch

        out = {
            name: torch.isin(stored, torch.tensor(labels, device=stored.device))
            for name, labels in REGIONS_STORED.items()
        }
    for name, label in zip(LABEL_NAMES, STORED_LABELS):
        out[name] = stored == label
    return out


def probabilities_to_labels(probs, threshold: float = 0.5, axis: int = 0):
    """Per-label sigmoid outputs -> stored label map.

    ``probs``: numpy array or torch tensor with the three labels along ``axis`` (e.g. (3, Z, Y, X),
    or (B, 3, Z, Y, X) with ``axis=1``); channel c is stored label c + 1. A voxel takes the label of
    its most probable channel when that probability reaches ``threshold``, else background.
    Returns the shape without ``axis``: uint8 for numpy, int64 for torch.
    """
    if isinstance(probs, np.ndarray):
        best = probs.argmax(axis=axis)
        return np.where(probs.max(axis=axis) >= threshold, best + 1, 0).astype(np.uint8)
    top, best = probs.max(dim=axis)
    return (best + 1) * (top >= threshold)


def onehot_to_labels(onehot, axis: int = 0):
    """One-hot without background (3 along ``axis``) -> stored label map; all-zero voxels are background."""
    return probabilities_to_labels(onehot, threshold=0.5, axis=axis)


def labels_to_onehot(stored: np.ndarray) -> np.ndarray:
    """Stored label map (...) -> one-hot without background, uint8 (3, ...)."""
    stored = np.asarray(stored)
    return np.stack([stored == label for label in STORED_LABELS]).astype(np.uint8)

"""Training the RSNA models through ``medflow.train.fit``: the two-input network (variant
``with_metadata``) and the same network without its metadata branch (``image_only``).

Images are read from the preprocessing HDF5 one at a time by the data loader (a worker opens the
file itself), so the data set never has to fit in memory. Augmentation (random shifts, small
rotations and zooms, optional horizontal flips) runs on the batch inside the training step, with
torch's generator that ``fit`` seeds every epoch, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medflow import train as mtrain
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report
from medflow.ingest import splits
from medflow.rsna.model import GREY_MEAN, GREY_STD, ModelConfig, TwoInputNet, normalise

log = logging.getLogger(__name__)

VARIANTS = {"with_metadata": True, "image_only": False}  # variant -> uses metadata
EXPERIMENT = "rsna"


class H5Patients(torch.utils.data.Dataset):
    """Rows ``indices`` of the preprocessing HDF5 -> (image uint8 (H, W), meta float32 (F,), target float32)."""

    def __init__(self, path: str | os.PathLike, indices: Sequence[int]):
        self.path = str(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self._h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._h5 is None:  # opened in the process that reads (h5py handles do not survive fork)
            import h5py

            self._h5 = h5py.File(self.path, "r")
        j = int(self.indices[i])
        h5 = self._h5
        return (torch.from_numpy(h5["image"][j]), torch.from_numpy(h5["meta"][j]),
                torch.tensor(float(h5["target"][j]), dtype=torch.float32))

    def __getstate__(self):
        return {**self.__dict__, "_h5": None}


def split_indices(h5_path: str | os.PathLike, split_csv: str | os.PathLike) -> dict[str, np.ndarray]:
    """Row indices of the HDF5 per split name, from the ingest stage's patient-level split.
    Patients of the split that the HDF5 lacks (excluded upstream) are simply absent."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["patient_id"][:]]
    split = splits.read_split(split_csv, id_col="patientId")
    where = dict(zip(split["patientId"], split["split"]))
    unknown = [i for i in ids if i not in where]
    if unknown:
        raise InputError(split_csv, f"patientId {unknown[0]} of {h5_path} has no split")
    out: dict[str, list[int]] = {}
    for k, pid in enumerate(ids):
        out.setdefault(where[pid], []).append(k)
    return {name: np.asarray(v, dtype=np.int64) for name, v in out.items()}


def augment(image: torch.Tensor, translate: float, rotate_deg: float, scale: float, hflip: bool) -> torch.Tensor:
    """Random affine per sample of a (B, 1, H, W) batch: shift up to ``translate`` of the size, rotate
    up to ``rotate_deg``, zoom by up to ``scale`` (fraction), flip left-right when ``hflip``."""
    b = image.shape[0]
    if b == 0 or (translate == 0 and rotate_deg == 0 and scale == 0 and not hflip):
        return image
    dev = image.device
    angle = (torch.rand(b) * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (torch.rand(b) * 2 - 1) * scale
    shift = (torch.rand(b, 2) * 2 - 1) * 2 * translate  # grid units: the image spans [-1, 1]
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(dev, image.dtype), list(image.shape), align_corners=False)
    # Padding with the normalised black level: outside the film is background, not average grey.
    black = -GREY_MEAN / GREY_STD
    return F.grid_sample(image - black, grid, align_corners=False, padding_mode="zeros") + black


def predict(model: torch.nn.Module, loader, device: torch.device, bf16: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities) over ``loader``, both (N,) float."""
    ys, ps = [], []
    model.eval()
    with torch.no_grad(), mtrain.autocast(device, bf16):
        for image, meta, y in loader:
            image, meta = mtrain.to_device(image, device), mtrain.to_device(meta, device)
            logits = model(normalise(image), meta if model.use_meta else None)
            ps.append(torch.sigmoid(logits.float()).cpu().numpy())
            ys.append(y.numpy())
    return (np.concatenate(ys), np.concatenate(ps)) if ys else (np.zeros(0), np.zeros(0))


def loaders(h5_path, idx: Mapping[str, np.ndarray], names: Sequence[str], batch_size: int, device, threads: int, shuffle_first: bool):
    kw = mtrain.loader_kwargs(device, threads)
    return [torch.utils.data.DataLoader(H5Patients(h5_path, idx.get(n, [])), batch_size=batch_size,
                                        shuffle=shuffle_first and k == 0, drop_last=False, **kw)
            for k, n in enumerate(names)]


def train(h5_path: str | os.PathLike, split_csv: str | os.PathLike, variant: str, checkpoint: str | os.PathLike,
          curves: str | os.PathLike | None, params: Mapping[str, Any], *, threads: int = 1, seed: int = 0,
          bf16: bool = True, rule: str | None = None, track: bool = True) -> mtrain.FitResult:
    """Train ``variant`` on the train split, select on val AUC, write the best checkpoint.

    ``params`` is config ``rsna.train``: backbone, weights, channels, meta_hidden, dropout, epochs,
    patience, batch_size, lr, weight_decay, augment {translate, rotate_deg, scale, hflip}.
    """
    import h5py

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    use_meta = VARIANTS[variant]
    device = mtrain.select_device(threads)
    mtrain.seed_everything(seed)
    idx = split_indices(h5_path, split_csv)
    for name in ("train", "val"):
        if len(idx.get(name, [])) == 0:
            raise InputError(split_csv, f"no usable patient in the {name} split")
    with h5py.File(h5_path, "r") as h5:
        features = json.loads(h5.attrs["meta_features"])
        size = int(h5.attrs["size"])
        n_pos = int(h5["target"][:][idx["train"]].sum())
    mcfg = ModelConfig.from_params(params)
    model = TwoInputNet(len(features), mcfg, use_meta=use_meta)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d train (%d positive), %d val patients; %d features; %d parameters; device %s",
             variant, len(idx["train"]), n_pos, len(idx["val"]), len(features), n_params, device)
    train_loader, val_loader = loaders(h5_path, idx, ["train", "val"], int(params["batch_size"]), device, threads, True)
    opt = torch.optim.AdamW(model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))
    aug = dict(params.get("augment", {}))

    def train_step(m, batch):
        image, meta, y = batch
        x = augment(normalise(image), float(aug.get("translate", 0)), float(aug.get("rotate_deg", 0)),
                    float(aug.get("scale", 0)), bool(aug.get("hflip", False)))
        return F.binary_cross_entropy_with_logits(m(x, meta if use_meta else None).float(), y)

    def evaluate(m, loader):
        y, p = predict(m, loader, device, bf16)
        eps = 1e-7
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) if len(y) else float("nan")
        return {"loss": loss, "auc": binary_report(y, p)["auc"]}

    cfg = mtrain.FitConfig(epochs=int(params["epochs"]), monitor="val_auc", mode="max", patience=int(params["patience"]),
                           seed=seed, bf16=bf16)
    meta = {"variant": variant, "use_meta": use_meta, "model": mcfg.to_dict(), "meta_features": features, "size": size}
    tracking = None
    if track:
        tracking = mtrain.Tracking(
            experiment=EXPERIMENT, run_name=f"rsna_train_{variant}", rule=rule,
            params={"variant": variant, "seed": seed, "n_train": len(idx["train"]), "n_val": len(idx["val"]),
                    "image_size": size, "meta_features": ",".join(features) if use_meta else "", "n_parameters": n_params,
                    **dict(params)},
            tags={"pipeline": "rsna", "variant": variant})
    return mtrain.fit(model, opt, train_loader, val_loader, train_step=train_step, evaluate=evaluate, cfg=cfg,
                      device=device, checkpoint_path=checkpoint, checkpoint_meta=meta, tracking=tracking,
                      fingerprint={"params": dict(params), "variant": variant, "seed": seed, "n_train": len(idx["train"])},
                      curves_path=curves)


def load_model(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TwoInputNet, dict]:
    """A trained model (eval mode) and its checkpoint dict."""
    ckpt = mtrain.load_checkpoint(checkpoint, map_location=device)
    meta = ckpt["meta"]
    model = TwoInputNet(len(meta["meta_features"]), ModelConfig(**{**meta["model"], "weights": "none"}), use_meta=meta["use_meta"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt

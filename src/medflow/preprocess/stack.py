"""HDF5 stacking: one file per case holding the four corrected, trimmed modalities and the label.

Layout of ``results/brats/stack/{case}.h5``:

- ``image`` float32 (4, Z, Y, X), modalities flair, t1, t1ce, t2 (N4-corrected, trimmed);
- ``label`` uint8 (Z, Y, X), the stored labels {0, 1, 2, 3} (3 the enhancing tumour), converted from the
  release's raw labels (2020/2021: 4 stored as 3; 2023-GLI: already stored);
- attributes ``case_id``, ``modalities`` (JSON list), ``spacing_zyx`` (mm), ``affine`` (4x4 of the
  source NIfTI), ``original_shape_zyx``, ``kept_z_range`` [start, stop) in the original volume,
  ``source_files`` (JSON list of file names, flair, t1, t1ce, t2, seg) and ``release`` (the BraTS release
  name, so a predict stage writes labels back in that release's convention; absent in older stacks: 2020).

Axes: a NIfTI array ``a`` indexed (i, j, k) = (X, Y, Z) maps to ``image[c, z, y, x] =
a[x, y, z + start]`` with ``start = kept_z_range[0]``; the inverse is
``a[:, :, start:stop] = stack.transpose(2, 1, 0)``, which lies in the grid of ``affine``.

Datasets are chunked (one modality, ``chunk_zyx`` voxels per chunk) and compressed, so reading a
patch decompresses only the chunks it touches. Modalities are written one at a time so a job holds
about one volume in memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from medflow.errors import InputError
from medflow.ingest import releases
from medflow.ingest.brats import MODALITIES
from medflow.ingest.releases import Release

log = logging.getLogger(__name__)
# The default release (a frozen dataclass, safe as an argument default): callers that name none get 2020.
DEFAULT_RELEASE = releases.get("2020")


@dataclass
class StackParams:
    """``brats.stack`` in config: chunk shape (Z, Y, X) and compression (gzip level 0-9, lzf or none)."""

    chunk_zyx: list[int] = field(default_factory=lambda: [16, 64, 64])
    compression: str = "gzip"
    compression_level: int = 4

    def h5_kwargs(self, shape_zyx: Sequence[int]) -> dict:
        chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(self.chunk_zyx, shape_zyx))
        kw: dict = {"chunks": chunks}
        if self.compression == "gzip":
            kw.update(compression="gzip", compression_opts=int(self.compression_level), shuffle=True)
        elif self.compression == "lzf":
            kw.update(compression="lzf", shuffle=True)
        elif self.compression != "none":
            raise ValueError(f"unknown compression {self.compression!r}: gzip, lzf or none")
        return kw


def to_zyx(data_xyz: np.ndarray) -> np.ndarray:
    """NIfTI (X, Y, Z) array -> (Z, Y, X) view."""
    return np.asarray(data_xyz).transpose(2, 1, 0)


def to_stored_label(
    seg: np.ndarray, path: str | os.PathLike = "segmentation", *, release: Release = DEFAULT_RELEASE
) -> np.ndarray:
    """The release's raw labels (2020/2021: {0, 1, 2, 4}) -> stored uint8 {0, 1, 2, 3}, same shape; a value
    outside the release's set -> InputError naming ``path``, the values found and the expected set."""
    return release.to_stored(np.asarray(seg), path)


def stack_case(
    case: str,
    modality_paths: Mapping[str, str | os.PathLike],
    seg_path: str | os.PathLike | None,
    kept_z_range: Sequence[int],
    out_path: str | os.PathLike,
    params: StackParams,
    affine: np.ndarray | None = None,
    source_files: Sequence[str] | None = None,
    *,
    release: Release = DEFAULT_RELEASE,
) -> None:
    """Write the stacked case (see module docstring) atomically.

    ``modality_paths``: {modality: corrected NIfTI}; ``seg_path``: the raw segmentation, in ``release``'s
    labels (``None`` for a new, unlabeled case: no ``label`` dataset); ``kept_z_range``: [start, stop) along
    the NIfTI k (axial) axis; ``affine``: the source NIfTI's
    (default: the first modality's); ``source_files``: names of the raw files for provenance.
    """
    import h5py

    from medflow import io
    from medflow.ingest.brats import load_nifti

    start, stop = (int(v) for v in kept_z_range)
    with io.atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        ref = None
        for c, mod in enumerate(MODALITIES):
            img, data = load_nifti(modality_paths[mod], dtype=np.float32)
            if ref is None:
                ref = img
                shape_zyx = to_zyx(data).shape
                if not (0 <= start < stop <= shape_zyx[0]):
                    raise InputError(
                        modality_paths[mod], f"kept slice range [{start}, {stop}) outside its {shape_zyx[0]} slices"
                    )
                out_zyx = (stop - start, *shape_zyx[1:])
                ds = f.create_dataset(
                    "image",
                    shape=(len(MODALITIES), *out_zyx),
                    dtype=np.float32,
                    **_with_channel(params.h5_kwargs(out_zyx)),
                )
            elif to_zyx(data).shape != shape_zyx:
                raise InputError(modality_paths[mod], f"shape {list(data.shape)} differs from flair's")
            ds[c] = to_zyx(data)[start:stop]
            del data
        if seg_path is not None:
            _, seg = load_nifti(seg_path)
            if to_zyx(seg).shape != shape_zyx:
                raise InputError(seg_path, f"shape {list(seg.shape)} differs from the modalities'")
            label = to_stored_label(to_zyx(seg), seg_path, release=release)
            dropped = int(np.count_nonzero(label[:start])) + int(np.count_nonzero(label[stop:]))
            if dropped:
                raise InputError(seg_path, f"{dropped} labelled voxels lie outside the kept slices [{start}, {stop})")
            f.create_dataset("label", data=np.ascontiguousarray(label[start:stop]), **params.h5_kwargs(out_zyx))
        zooms = ref.header.get_zooms()[:3]
        f.attrs["case_id"] = case
        f.attrs["modalities"] = json.dumps(list(MODALITIES))
        f.attrs["spacing_zyx"] = np.array(zooms[::-1], dtype=float)
        f.attrs["affine"] = np.asarray(ref.affine if affine is None else affine, dtype=float)
        f.attrs["original_shape_zyx"] = np.array(shape_zyx, dtype=np.int64)
        f.attrs["kept_z_range"] = np.array([start, stop], dtype=np.int64)
        names = (
            source_files
            if source_files is not None
            else [os.path.basename(str(p)) for p in (*(modality_paths[m] for m in MODALITIES), seg_path) if p]
        )
        f.attrs["source_files"] = json.dumps(list(names))
        f.attrs["release"] = release.name
    log.info("%s: image (4, %d, %d, %d), slices [%d, %d) of %d", case, *out_zyx, start, stop, shape_zyx[0])


def stack_from_records(
    case: str,
    images: Sequence[str],
    seg: str,
    valid_json: str | os.PathLike,
    trim_json: str | os.PathLike,
    out: str | os.PathLike,
    params: Mapping,
    release: Release,
) -> None:
    """The brats_stack stage: ``stack_case`` of the corrected ``images`` (modality order) and the raw ``seg``,
    with the affine and file names of brats_validate's JSON and the slice range of brats_trim's."""
    from medflow import io
    from medflow.params import from_config

    valid, kept = io.read_json(valid_json), io.read_json(trim_json)
    stack_case(
        case,
        dict(zip(MODALITIES, images)),
        seg,
        kept["kept_z_range"],
        out,
        from_config(StackParams, params),
        affine=valid["affine"],
        source_files=[valid["source_files"][k] for k in (*MODALITIES, "seg")],
        release=release,
    )


def _with_channel(kw: dict) -> dict:
    """Chunk the (4, Z, Y, X) image one modality at a time."""
    return {**kw, "chunks": (1, *kw["chunks"])}


# The one reader of the files stack_case writes (segmentation evaluation, grade slices, prediction).
def _open(path: str | os.PathLike):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot open as HDF5 ({exc})") from None


@dataclass
class Stack:
    """A stacked case: ``image`` (4, Z, Y, X) float32, ``label`` (Z, Y, X) uint8 stored labels or None,
    ``spacing_zyx`` mm, ``affine`` 4x4 of the source NIfTI, ``original_shape_zyx`` and ``kept_z_range``
    [start, stop) placing the stack in the original volume, ``release`` the BraTS release name its raw
    labels came in (``medflow.ingest.releases.get(release).from_stored`` writes them back)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    affine: np.ndarray
    original_shape_zyx: tuple[int, int, int]
    kept_z_range: tuple[int, int]
    release: str = DEFAULT_RELEASE.name


def _attr(f, path, name: str):
    if name not in f.attrs:
        raise InputError(path, f"attribute '{name}' is missing")
    value = f.attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        value = json.loads(value)
    return value


def read_stack(path: str | os.PathLike, with_label: bool = True) -> Stack:
    """Read and check a stacked case (whole volume: evaluation works on one case at a time)."""
    with _open(path) as f:
        if "image" not in f:
            raise InputError(path, "no 'image' dataset")
        image = np.asarray(f["image"][()], dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != len(MODALITIES):
            raise InputError(path, f"'image' must be ({len(MODALITIES)}, Z, Y, X), got {image.shape}")
        label = None
        if with_label:
            if "label" not in f:
                raise InputError(path, "no 'label' dataset")
            label = np.asarray(f["label"][()])
            if label.shape != image.shape[1:]:
                raise InputError(path, f"'label' shape {label.shape} differs from the image's {image.shape[1:]}")
            bad = np.setdiff1d(np.unique(label), (0, 1, 2, 3))
            if bad.size:
                raise InputError(path, f"'label' holds values {bad.tolist()} outside the stored labels 0..3")
            label = label.astype(np.uint8)
        case_id = str(_attr(f, path, "case_id"))
        spacing = tuple(float(s) for s in np.ravel(_attr(f, path, "spacing_zyx")))
        affine = np.asarray(_attr(f, path, "affine"), dtype=float)
        original = tuple(int(s) for s in np.ravel(_attr(f, path, "original_shape_zyx")))
        kept = tuple(int(s) for s in np.ravel(_attr(f, path, "kept_z_range")))
        # Stacks written before releases were recorded all came from 2020 data.
        release = str(_attr(f, path, "release")) if "release" in f.attrs else DEFAULT_RELEASE.name
    if len(spacing) != 3 or affine.shape != (4, 4) or len(original) != 3 or len(kept) != 2:
        raise InputError(
            path, "attributes spacing_zyx (3), affine (4x4), original_shape_zyx (3) or kept_z_range (2) are malformed"
        )
    if (
        kept[1] - kept[0] != image.shape[1]
        or not (0 <= kept[0] < kept[1] <= original[0])
        or original[1:] != image.shape[2:]
    ):
        raise InputError(
            path,
            f"kept_z_range {list(kept)} and original_shape_zyx {list(original)} do not fit the image {image.shape[1:]}",
        )
    if release not in releases.RELEASES:
        raise InputError(path, f"attribute 'release' names an unknown BraTS release {release!r}")
    return Stack(case_id, image, label, spacing, affine, original, kept, release)

"""RSNA exploratory plots from the metadata table, like the tutorial's: one PNG each.

``PLOTS`` names them; ``write_plots`` writes all of them into one folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medflow import io

PLOTS = ("view_position", "class_target", "age_by_class", "age_by_sex", "pixel_spacing", "mean_intensity", "samples")
TARGET_NAMES = {0: "Target 0", 1: "Target 1 (opacity)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    io.save_figure(fig, path, dpi=90)


def _label(v: str) -> str:
    return v if v else "unknown"


def view_position(df: pd.DataFrame, path) -> None:
    """Counts by view position, split by Target, with the positive rate per view."""
    plt = _plt()
    ct = pd.crosstab(df["view_position"].map(_label), df["target"]).reindex(columns=[0, 1], fill_value=0)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(ct))
    for k, t in enumerate((0, 1)):
        ax.bar(x + (k - 0.5) * 0.4, ct[t], width=0.4, label=TARGET_NAMES[t])
    for i, (_, row) in enumerate(ct.iterrows()):
        ax.text(i, row.max(), f"{row[1] / max(row.sum(), 1):.0%} pos.", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, ct.index)
    ax.set_ylabel("patients")
    ax.set_title("View position")
    ax.legend(fontsize=8)
    _save(fig, path)


def class_target(df: pd.DataFrame, path) -> None:
    """Patients per detailed class and per Target."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [3, 2]})
    c = df["class"].value_counts().sort_index()
    a.barh(c.index, c.values, color="tab:blue")
    a.set_xlabel("patients")
    a.set_title("Detailed class")
    t = df["target"].value_counts().reindex([0, 1], fill_value=0)
    b.bar([TARGET_NAMES[i] for i in t.index], t.values, color=["tab:grey", "tab:red"])
    b.set_title("Target")
    _save(fig, path)


def age_by_class(df: pd.DataFrame, path) -> None:
    """Age distributions (years) per detailed class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.arange(0, 101, 5)
    for cls, g in df.groupby("class"):
        ax.hist(g["age_years"].dropna(), bins=bins, histtype="step", lw=1.5, density=True, label=f"{cls} (n={len(g)})")
    n_unknown = int(df["age_years"].isna().sum())
    ax.set_xlabel("age (years)")
    ax.set_ylabel("density")
    ax.set_title(f"Age by class ({n_unknown} unknown ages not shown)")
    ax.legend(fontsize=7)
    _save(fig, path)


def age_by_sex(df: pd.DataFrame, path) -> None:
    """Box plots of age by sex, side by side for each Target."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    groups, labels = [], []
    for sex in sorted(df["sex"].map(_label).unique()):
        for t in (0, 1):
            g = df[(df["sex"].map(_label) == sex) & (df["target"] == t)]["age_years"].dropna()
            groups.append(g.values)
            labels.append(f"{sex}\nT{t}")
    ax.boxplot(groups, tick_labels=labels)
    ax.set_ylabel("age (years)")
    ax.set_title("Age by sex and Target")
    _save(fig, path)


def pixel_spacing(df: pd.DataFrame, path) -> None:
    """Counts of (row x column) pixel spacing values in mm (to 0.001 mm); "none" where missing."""
    plt = _plt()
    lab = [
        f"{r:.3f} x {c:.3f}" if np.isfinite(r) else "none"
        for r, c in zip(df["pixel_spacing_row"].astype(float), df["pixel_spacing_col"].astype(float))
    ]
    c = pd.Series(lab).value_counts().sort_index()
    top = c.sort_values(ascending=False).head(25).sort_index()
    fig, ax = plt.subplots(figsize=(6, max(3, 0.22 * len(top) + 1)))
    ax.barh(top.index, top.values)
    ax.set_xlabel("images")
    ax.set_title(f"Pixel spacing (mm), {len(c)} distinct" + (", top 25" if len(c) > 25 else ""))
    ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)


def mean_intensity(df: pd.DataFrame, path) -> None:
    """Mean intensity per image as a fraction of its stored range (8- and 12/16-bit images differ in
    units), by Target."""
    plt = _plt()
    d = df[df["usable"]]
    frac = d["intensity_mean"] / (2.0 ** d["bits_stored"].clip(lower=1) - 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for t in (0, 1):
        ax.hist(frac[d["target"] == t], bins=30, histtype="step", lw=1.5, density=True, label=TARGET_NAMES[t])
    ax.set_xlabel("mean intensity / (2^BitsStored - 1)")
    ax.set_ylabel("density")
    ax.set_title("Mean intensity")
    ax.legend(fontsize=8)
    _save(fig, path)


def samples(df: pd.DataFrame, manifest: pd.DataFrame, path, n: int = 4) -> None:
    """A few images per Target with their boxes (first usable patients by id; percentile window)."""
    import matplotlib.patches as patches
    import pydicom

    from medflow.rsna import dicom as dcm
    from medflow.rsna.preprocess import invert_monochrome1, percentile_window, window

    plt = _plt()
    m = manifest.set_index("patientId")
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 5))
    for row, t in enumerate((0, 1)):
        ids = sorted(df[(df["target"] == t) & df["usable"]]["patientId"])[:n]
        for col in range(n):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(ids):
                continue
            ds = pydicom.dcmread(m.at[ids[col], "dicom"])
            img = dcm.decode_pixels(ds)
            img = invert_monochrome1(
                window(img, *percentile_window(img, 0.5, 99.5)), dcm.text(ds, "PhotometricInterpretation")
            )
            ax.imshow(img, cmap="gray")
            for x, y, w, h in json.loads(m.at[ids[col], "boxes"]):
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, color="red", lw=1))
            ax.set_title(TARGET_NAMES[t], fontsize=8)
    _save(fig, path)


def write_plots(table: pd.DataFrame, manifest: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Every plot of ``PLOTS`` as ``<out_dir>/<name>.png``; returns the paths."""
    out_dir = Path(out_dir)
    from_table = {
        "view_position": view_position,
        "class_target": class_target,
        "age_by_class": age_by_class,
        "age_by_sex": age_by_sex,
        "pixel_spacing": pixel_spacing,
        "mean_intensity": mean_intensity,
    }
    for name, plot in from_table.items():
        plot(table, out_dir / f"{name}.png")
    samples(table, manifest, out_dir / "samples.png")
    return [out_dir / f"{name}.png" for name in PLOTS]

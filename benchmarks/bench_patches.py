"""Patch sampling: the tutorial's rejection loop vs sampling from the precomputed acceptable origins.

On real-size cases (240 x 240 x 155 synthetic, trimmed like the workflow) with whole tumours of
different sizes, the same patch size (tutorial: 160 x 160 x 16) and background threshold (0.95),
N patches per case:

- baseline: the tutorial's ``get_sub_volume`` called N times: a random origin, ``to_categorical`` of the
  label patch, accepted if the background fraction is below the threshold, up to 1000 tries;
- ours: ``medflow.preprocess.patches.origin_table`` (foreground box, one summed-area table) and N
  distinct draws from the acceptable origins, then ``extract`` (image patch + one-hot label) for each.

Two timings each: ``sampling`` (finding N acceptable origins and their one-hot labels: what the
rejection loop does) and ``with image`` (also copying each image patch, as ``get_sub_volume`` returns
it). Standardisation, the same rule in both, is timed on its own. Best of ``--repeats`` runs.

Run by hand, never in CI:
    PYTHONPATH=src python benchmarks/bench_patches.py [--n 8 32] [--patch 16 160 160] [--threshold 0.95]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medflow.ingest.brats import MODALITIES
from medflow.preprocess.patches import case_rng, extract, one_hot, origin_table, standardise
from medflow.preprocess.stack import to_stored_label, to_zyx
from medflow.preprocess.trim import kept_range, signal_per_slice


def to_categorical(y, num_classes):
    """keras.utils.to_categorical (Keras 2), as the tutorial called it."""
    y = np.array(y, dtype="int")
    input_shape = y.shape
    y = y.ravel()
    n = y.shape[0]
    categorical = np.zeros((n, num_classes), dtype="float32")
    categorical[np.arange(n), y] = 1
    return np.reshape(categorical, input_shape + (num_classes,))


def get_sub_volume(
    image,
    label,
    orig_x,
    orig_y,
    orig_z,
    output_x=160,
    output_y=160,
    output_z=16,
    num_classes=4,
    max_tries=1000,
    background_threshold=0.95,
    counter=None,
    copy_image=True,
):
    """The tutorial's sampler (image (X, Y, Z, 4), label (X, Y, Z)); ``counter`` collects the tries,
    ``copy_image=False`` skips the image copy (to time the sampling alone)."""
    tries = 0
    while tries < max_tries:
        start_x = np.random.randint(0, orig_x - output_x + 1)
        start_y = np.random.randint(0, orig_y - output_y + 1)
        start_z = np.random.randint(0, orig_z - output_z + 1)
        y = label[start_x : start_x + output_x, start_y : start_y + output_y, start_z : start_z + output_z]
        y = to_categorical(y, num_classes=num_classes)
        bgrd_ratio = np.sum(y[:, :, :, 0]) / (output_x * output_y * output_z)
        tries += 1
        if bgrd_ratio < background_threshold:
            X = None
            if copy_image:
                X = np.copy(
                    image[start_x : start_x + output_x, start_y : start_y + output_y, start_z : start_z + output_z, :]
                )
                X = np.moveaxis(X, 3, 0)
            y = np.moveaxis(y, 3, 0)
            y = y[1:, :, :, :]
            if counter is not None:
                counter.append(tries)
            return X, y
    if counter is not None:
        counter.append(tries)
    return None, None


def tutorial_standardise(image):
    """The tutorial's loop over channels and slices (image (C, X, Y, Z)), sd 0 left unscaled."""
    standardised_image = np.zeros(image.shape)
    for c in range(image.shape[0]):
        for z in range(image.shape[3]):
            image_slice = image[c, :, :, z]
            centered = image_slice - np.mean(image_slice)
            centered_scaled = centered / np.std(centered) if np.std(centered) != 0 else centered
            standardised_image[c, :, :, z] = centered_scaled
    return standardised_image


def best(fn, repeats):
    times, out = [], None
    for r in range(repeats):
        t = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - t)
    return min(times), out


def bench_case(args, grade, scale):
    from brats_case import real_size_case

    images, seg, _ = real_size_case(grade=grade, tumour_scale=scale)
    start, stop = kept_range(np.any([signal_per_slice(v) for v in images.values()], axis=0))
    # C order (Z, Y, X), as the stacked case is read from HDF5.
    image_zyx = np.ascontiguousarray(np.stack([to_zyx(images[m])[start:stop] for m in MODALITIES]), np.float32)
    label_zyx = np.ascontiguousarray(to_stored_label(to_zyx(seg))[start:stop])
    del images
    image_xyzc = np.ascontiguousarray(image_zyx.transpose(3, 2, 1, 0))  # the tutorial's layout
    label_xyz = np.ascontiguousarray(label_zyx.transpose(2, 1, 0))
    pz, py, px = args.patch
    ox, oy, oz = label_xyz.shape

    def ours(n, seed, with_image):
        table = origin_table(label_zyx, args.patch, args.threshold)
        origins = table.draw(n, case_rng(seed, "bench"))
        if with_image:
            return [extract(image_zyx, label_zyx, o, args.patch) for o in origins], table
        box = [tuple(slice(int(a), int(a) + int(p)) for a, p in zip(o, args.patch)) for o in origins]
        return [one_hot(label_zyx[b]) for b in box], table

    def tutorial(n, seed, with_image, counter):
        np.random.seed(seed)
        return [
            get_sub_volume(
                image_xyzc,
                label_xyz,
                ox,
                oy,
                oz,
                px,
                py,
                pz,
                background_threshold=args.threshold,
                counter=counter,
                copy_image=with_image,
            )
            for _ in range(n)
        ]

    rows = []
    for n in args.n:
        row = {"grade": grade, "wt_cm3": (seg > 0).sum() / 1000, "n": n}
        for with_image in (False, True):
            t_ours, (patches, table) = best(lambda r, n=n, with_image=with_image: ours(n, r, with_image), args.repeats)
            tries: list = []
            t_tut, tut = best(
                lambda r, n=n, with_image=with_image, tries=tries: tutorial(n, r, with_image, tries), args.repeats
            )
            key = "image" if with_image else "sampling"
            row[key] = (t_tut, t_ours)
            row["tries"] = np.mean(tries)
            row["found"] = (sum(y is not None for _, y in tut), len(patches))
            row["acceptable"] = table.n_accepted / max(1, table.n_candidates)
        rows.append(row)
        s_t, s_o = row["sampling"]
        i_t, i_o = row["image"]
        print(
            f"{grade} WT {row['wt_cm3']:5.0f} cm3, acceptable origins {100 * row['acceptable']:5.1f}%, N={n:3d}: "
            f"tutorial {row['tries']:6.1f} tries/patch, found {row['found'][0]:.0f}/{n} (ours {row['found'][1]}/{n}) | "
            f"sampling {s_t * 1000:8.1f} vs {s_o * 1000:6.1f} ms = {s_t / s_o:6.1f}x | "
            f"with image {i_t * 1000:8.1f} vs {i_o * 1000:6.1f} ms = {i_t / i_o:6.1f}x"
        )
    return rows, image_zyx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32], help="patches per case")
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 160, 160], help="(Z, Y, X)")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["HGG:0.6", "HGG:0.45", "LGG:0.6", "LGG:0.45"],
        help="grade:tumour_scale of each synthetic case",
    )
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    args = ap.parse_args()
    print(f"patch (Z, Y, X) {tuple(args.patch)}, background threshold {args.threshold} (target: >= 20x)")
    for spec in args.cases:
        grade, scale = spec.split(":")
        _, image_zyx = bench_case(args, grade, float(scale))

    x = image_zyx[:, : args.patch[0], : args.patch[1], : args.patch[2]]
    t_ours, _ = best(lambda r: standardise(x), args.repeats)
    t_tut, _ = best(lambda r: tutorial_standardise(x.transpose(0, 3, 2, 1)), args.repeats)
    print(f"standardisation of one patch: tutorial loop {t_tut * 1000:.1f} ms, ours {t_ours * 1000:.1f} ms")


if __name__ == "__main__":
    main()

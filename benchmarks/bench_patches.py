"""Patch sampling: the tutorial's rejection loop vs sampling from the precomputed acceptable origins.

On one real-size case (240 x 240 x 155 synthetic, real-sized tumour, trimmed like the workflow), the
same patch size (tutorial: 160 x 160 x 16) and background threshold (0.95), N patches per case:

- baseline: the tutorial's ``get_sub_volume`` called N times: a random origin, ``to_categorical`` of the
  label patch, accepted if the background fraction is below the threshold, up to 1000 tries;
- ours: ``medflow.preprocess.patches.sample_origins`` (one summed-area table, then N distinct draws from
  the acceptable origins) and ``extract`` (image patch + one-hot label) for each.

Both return the same things (image patch, one-hot label without background) from arrays in memory;
standardisation, identical in both, is timed separately (the tutorial's loop vs ours).

Run by hand, never in CI:
    PYTHONPATH=src python benchmarks/bench_patches.py [--n 1 8 32] [--patch 16 160 160] [--threshold 0.95]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medflow.preprocess.patches import case_rng, extract, sample_origins, standardize
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


def get_sub_volume(image, label, orig_x, orig_y, orig_z, output_x=160, output_y=160, output_z=16,
                   num_classes=4, max_tries=1000, background_threshold=0.95, counter=None):
    """The tutorial's sampler (image (X, Y, Z, 4), label (X, Y, Z)); ``counter`` counts the tries."""
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
            X = np.copy(image[start_x : start_x + output_x, start_y : start_y + output_y, start_z : start_z + output_z, :])
            X = np.moveaxis(X, 3, 0)
            y = np.moveaxis(y, 3, 0)
            y = y[1:, :, :, :]
            if counter is not None:
                counter.append(tries)
            return X, y
    if counter is not None:
        counter.append(tries)
    return None, None


def tutorial_standardize(image):
    """The tutorial's loop over channels and slices (image (C, X, Y, Z)), sd 0 left unscaled."""
    standardized_image = np.zeros(image.shape)
    for c in range(image.shape[0]):
        for z in range(image.shape[3]):
            image_slice = image[c, :, :, z]
            centered = image_slice - np.mean(image_slice)
            centered_scaled = centered / np.std(centered) if np.std(centered) != 0 else centered
            standardized_image[c, :, :, z] = centered_scaled
    return standardized_image


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8, 32], help="patches per case")
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 160, 160], help="(Z, Y, X)")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--grade", default="HGG", choices=["HGG", "LGG"])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    args = ap.parse_args()

    from brats_case import real_size_case

    images, seg, _ = real_size_case(grade=args.grade)
    profile = np.any([signal_per_slice(v) for v in images.values()], axis=0)
    start, stop = kept_range(profile)
    image_zyx = np.stack([to_zyx(images[m])[start:stop] for m in ("flair", "t1", "t1ce", "t2")]).astype(np.float32)
    label_zyx = np.ascontiguousarray(to_stored_label(to_zyx(seg))[start:stop])
    image_xyzc = np.ascontiguousarray(image_zyx.transpose(3, 2, 1, 0))  # the tutorial's layout
    label_xyz = np.ascontiguousarray(label_zyx.transpose(2, 1, 0))
    pz, py, px = args.patch
    ox, oy, oz = label_xyz.shape
    print(f"trimmed volume (Z, Y, X) {label_zyx.shape}, patch (Z, Y, X) {tuple(args.patch)}, threshold {args.threshold}")

    def ours(n, seed):
        origins, n_acc = sample_origins(label_zyx, args.patch, n, args.threshold, case_rng(seed, "bench"))
        return [extract(image_zyx, label_zyx, o, args.patch) for o in origins], n_acc

    def tutorial(n, seed, counter):
        np.random.seed(seed)
        return [get_sub_volume(image_xyzc, label_xyz, ox, oy, oz, px, py, pz, background_threshold=args.threshold,
                               counter=counter) for _ in range(n)]

    def best(fn):
        times = []
        for r in range(args.repeats):
            t = time.perf_counter()
            out = fn(r)
            times.append(time.perf_counter() - t)
        return min(times), out

    for n in args.n:
        t_ours, (patches, n_acc) = best(lambda r: ours(n, r))
        counters: list = []
        t_tut, tut = best(lambda r: tutorial(n, r, counters.append([]) or counters[-1]))
        tries = [sum(c) for c in counters]
        found = sum(x is not None for x, _ in tut)
        print(f"N={n:3d}: tutorial {t_tut * 1000:8.1f} ms ({np.mean(tries) / n:.1f} tries/patch, {found}/{n} found), "
              f"ours {t_ours * 1000:7.1f} ms ({len(patches)}/{n} found; {n_acc} acceptable origins of "
              f"{(oz - pz + 1) * (oy - py + 1) * (ox - px + 1)}) -> speed-up {t_tut / t_ours:.1f}x (target >= 20x)")

    x = patches[0][0]
    t_std_ours, _ = best(lambda r: standardize(x))
    x_tut = x.transpose(0, 3, 2, 1)
    t_std_tut, _ = best(lambda r: tutorial_standardize(x_tut))
    print(f"standardisation of one patch: tutorial loop {t_std_tut * 1000:.1f} ms, ours {t_std_ours * 1000:.1f} ms "
          f"({t_std_tut / t_std_ours:.1f}x)")


if __name__ == "__main__":
    main()

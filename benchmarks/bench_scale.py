"""Real-scale cost table: CPU seconds, wall seconds and peak memory per item of every CPU stage, on items of
the public data sets' real sizes, and the projected wall time of each full data set on 16 cores.

Items (synthetic, from the project's own generators, at the real sizes and in the real file formats):

- BraTS 2020: a case of four 240 x 240 x 155 int16 modalities and its segmentation, ``.nii`` in the 2020
  layout (``benchmarks/brats_case.py``: HGG and LGG in turn). Stages validate, N4 (the four modalities:
  one job, ``brats.n4.per_modality: false``; outputs ``.nii.gz`` as the per-stage rules write them),
  trim, stack, patches.
- RSNA pneumonia: 1024 x 1024 8-bit MONOCHROME2 chest radiographs (``medflow.synthetic.rsna``, square
  pixels, every header complete), stored JPEG baseline like the real files. Stages metadata
  (``write_table``) and preprocessing (``write_hdf5``).
- OCT2017: 512 x 496 (width x height) greyscale JPEGs (``medflow.synthetic.oct``) in the OCT2017 tree.
  Stage ingest (every JPEG decoded: ``oct.ingest.check_pixels``).
- MRNet: one plane of an exam, 35 slices of 256 x 256 uint8 (``.npy``, ``medflow.synthetic.mrnet``; the
  measured exams cycle through the axial, coronal and sagittal planes). Steps of a training loader
  worker per exam (``ExamDataset.__getitem__``): load (``load_series``), resize (only where
  ``mrnet.train.model.image_size`` differs from 256: not in config/mrnet.yaml, so not run), augment
  (``ExamAugmentation`` with the config's rotation, shift and flip).

Every stage calls the function its workflow script calls (workflow/scripts/brats_*.py, rsna_metadata.py,
rsna_preprocess.py, oct_ingest.py; the MRNet loader's own functions) with the params of the real-data
config (config/brats2020.yaml, rsna.yaml, oct.yaml, mrnet.yaml, each merged over config/config.yaml as
``--configfile`` does), read through the same params classes.

How it is measured: each stage runs in its own fresh Python process, as a Snakemake job does, on every
measured item one after another, at one thread: N4 with 1 ITK thread (``brats.n4.threads`` is 1 in
config/brats2020.yaml too), RSNA with ``threads`` 1 (no process pool; the config's 16 processes are
what the 16-core projection stands for), torch with 1 thread (as in a DataLoader worker), OpenMP/BLAS
with 1. Per item: CPU seconds (the process's user + system time, plus that of any child process) and
wall seconds. The stages that take the whole data set in one call (RSNA metadata and preprocessing,
OCT ingest) are timed as one call on all measured items, divided by their number (fixed costs
included). Peak RSS is the ``VmHWM`` of the stage's process (interpreter, imports and every item it
ran); MRNet's three steps run in one process, as in one loader worker, so they share one figure.
Job start-up (interpreter + the stage's imports, also those its functions make on first use) is printed
apart and counted in no per-item figure.

Projection (not a measurement): items of the full public data set x the sum of its stages' CPU s per
item / 16, i.e. every item on one core of 16, perfect parallelism over items, no I/O limit, no job
start-up. Items: 369 BraTS cases, 26,684 RSNA images, 84,484 OCT scans, 1,250 MRNet exams x 3 planes
(one pass: training reads every exam again in each epoch of each of its models). The workflow's OCT
ingest is one single-process job, so the script prints its one-core time beside the projection.

Rows are also written to results/benchmarks/bench_scale.json. Run by hand, never in CI (about 2.5 minutes
on the project's 2-core machine, two thirds of it N4; ``--quick``: about 1.5 minutes):
    PYTHONPATH=src python benchmarks/bench_scale.py [--brats 2] [--rsna 8] [--oct 16] [--mrnet 8]
    PYTHONPATH=src python benchmarks/bench_scale.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = 16
RSNA_SIZE = 1024  # rows and columns of the real radiographs
OCT_WH = (512, 496)  # width x height of most OCT2017 B-scans
MRNET_SLICES = 35
# Full public data sets: items, what an item is, and how many measured items make one (MRNet: 3 planes).
FULL = {
    "BraTS 2020": (369, "cases", 1),
    "RSNA": (26_684, "images", 1),
    "OCT2017": (84_484, "scans", 1),
    "MRNet": (1_250, "exams", 3),
}
# How the workflow spreads each data set's items over cores (what the 16-core projection assumes, or not).
PARALLEL = {
    "BraTS 2020": "a job per case and stage (brats.jobs per_stage): parallel over cases",
    "RSNA": "rsna.threads worker processes per stage (16 in config/rsna.yaml): parallel over images",
    "OCT2017": "oct_ingest is one single-process job: one core, not 16",
    "MRNet": "loader workers of each training job: parallel over exams and over the trainings",
}
CONFIGS = {"BraTS 2020": "brats2020", "RSNA": "rsna", "OCT2017": "oct", "MRNet": "mrnet"}
# Every stage process, in order: (data set, process name, its rows).
PROCESSES = [
    ("BraTS 2020", "brats_validate", ["validate"]),
    ("BraTS 2020", "brats_n4", ["N4 (4 modalities)"]),
    ("BraTS 2020", "brats_trim", ["trim"]),
    ("BraTS 2020", "brats_stack", ["stack"]),
    ("BraTS 2020", "brats_patches", ["patches"]),
    ("RSNA", "rsna_metadata", ["metadata"]),
    ("RSNA", "rsna_preprocess", ["preprocessing"]),
    ("OCT2017", "oct_ingest", ["ingest"]),
    ("MRNet", "mrnet_loader", ["load", "resize", "augment"]),
]
# Libraries the stage functions import on first use: imported before the clock starts, with the job's start-up.
LAZY_IMPORTS = {
    "brats_validate": ["nibabel"],
    "brats_n4": ["nibabel", "SimpleITK"],
    "brats_trim": ["nibabel"],
    "brats_stack": ["nibabel", "h5py"],
    "brats_patches": ["h5py"],
    "rsna_metadata": ["pydicom", "pydicom.pixels", "PIL.Image"],
    "rsna_preprocess": ["pydicom", "pydicom.pixels", "PIL.Image", "skimage.exposure", "h5py"],
}
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` key by key (nested mappings merged, anything else replaced), as
    Snakemake merges a ``--configfile`` over the Snakefile's ``configfile``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def real_config(name: str) -> dict:
    import yaml

    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return merged(base, yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))


def vm_hwm_mib() -> float:
    """This process's peak resident set size (``VmHWM``), MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def cpu_now() -> float:
    """CPU seconds of this process and of its finished child processes."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


# --- the items -------------------------------------------------------------------------------------------


def make_brats(work: Path, n: int, cfg: dict) -> list[str]:
    from brats_case import real_size_case

    from medflow.ingest import releases
    from medflow.synthetic.brats import brats_affine, write_nifti

    release = releases.get(cfg["brats"]["release"])
    cases = []
    for i in range(n):
        case = release.case_format.format(i=i + 1)
        images, seg, _ = real_size_case(seed=42 + i, grade="HGG" if i % 2 == 0 else "LGG")
        affine = brats_affine(seg.shape)
        for kind, data in [*images.items(), ("seg", seg)]:
            write_nifti(data, affine, work / "brats" / "raw" / case / release.file_name(case, kind))
        cases.append(case)
    return cases


def make_rsna(work: Path, n: int, seed: int) -> Path:
    """``n`` JPEG-baseline DICOMs of 1024 x 1024 and the manifest the metadata stage reads (ingest's columns)."""
    import io

    import numpy as np
    import pandas as pd
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from medflow.synthetic import rsna as syn

    folder = work / "rsna" / syn.IMAGES
    folder.mkdir(parents=True)
    # The real set: 8-bit, square pixels; no header quirks (they change which branch runs, not the cost).
    cfg = {
        "n_patients": n,
        "size": RSNA_SIZE,
        "bits16_fraction": 0.0,
        "anisotropic_fraction": 0.0,
        "missing_age_fraction": 0.0,
        "missing_spacing_fraction": 0.0,
    }
    rows = []
    for i, p in enumerate(syn.draw_patients(cfg, seed)):
        pixels, tags, boxes = syn.patient_image(p, i, cfg, seed)
        # The generator draws the field of view at +-5 %: crop or zero-pad to exactly 1024 x 1024.
        square = np.zeros((RSNA_SIZE, RSNA_SIZE), np.uint8)
        h, w = min(RSNA_SIZE, pixels.shape[0]), min(RSNA_SIZE, pixels.shape[1])
        square[:h, :w] = pixels[:h, :w]
        path = folder / f"{p.patient_id}.dcm"
        syn.write_dicom(path, square, tags, (seed, i))
        ds = pydicom.dcmread(path)
        buf = io.BytesIO()
        Image.fromarray(square, mode="L").save(buf, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(path, enforce_file_format=True)
        rows.append(
            {
                "patientId": p.patient_id,
                "dicom": str(path),
                "target": p.target,
                "n_boxes": len(boxes) if p.target else 0,
                "class": p.cls,
            }
        )
    manifest = work / "rsna" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def make_oct(work: Path, n: int, seed: int) -> int:
    """An OCT2017 tree of ``n`` (rounded to a multiple of 4, at least 12) 512 x 496 JPEGs: one image per
    patient, every class folder of train, val and test filled; returns the number of images."""
    from medflow.synthetic.oct import generate

    per_class = max(3, n // 4)
    aspect = OCT_WH[0] / OCT_WH[1]
    counts = generate(
        work / "oct" / "OCT2017",
        {
            "patients": {"train": per_class - 2, "val": 1, "test": 1},
            "images_per_patient": [1, 1],
            "height": [OCT_WH[1], OCT_WH[1]],
            "aspect": [aspect, aspect],
            "multi_class": 0.0,
        },
        seed,
    )
    return sum(counts.values())


def make_mrnet(work: Path, n: int, seed: int) -> None:
    import numpy as np

    from medflow.ingest.mrnet import PLANES
    from medflow.synthetic.mrnet import make_knee, render_plane

    folder = work / "mrnet"
    folder.mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        knee = make_knee(rng, {"abnormal": 0, "acl": 0, "meniscus": 0}, 0.5)
        np.save(folder / f"{i:04d}_{PLANES[i % 3]}.npy", render_plane(knee, PLANES[i % 3], MRNET_SLICES, rng, 6.0))


# --- the stages (run in the child process): (steps, items) -------------------------------------------------
# A step is (row, callable); the calls run in order and are timed one by one; a row's per-item figure is its
# calls' sum divided by ``items``. Everything a stage imports is imported before its first call (start-up).


def brats_stage(stage: str, work: Path, job: dict):
    from dataclasses import fields

    from medflow.ingest import releases
    from medflow.ingest.brats import MODALITIES, raw_files, write_validation
    from medflow.params import from_config
    from medflow.preprocess.n4 import N4Params, correct_case
    from medflow.preprocess.patches import PatchParams, sample_case
    from medflow.preprocess.stack import stack_from_records
    from medflow.preprocess.trim import write_trim

    cfg, cases = job["configs"]["brats"], job["brats_cases"]
    b = cfg["brats"]
    release = releases.get(b["release"])
    d = work / "brats"
    # As rules/brats.smk passes it: only the N4Params fields of brats.n4.
    n4 = from_config(N4Params, {f.name: b["n4"][f.name] for f in fields(N4Params)})
    patches = from_config(PatchParams, b["patches"])

    def run(case: str) -> None:
        raw = raw_files(d / "raw", case, release=release)  # what the rules' input functions give
        n4_out = [str(d / "n4" / case / f"{case}_{m}.nii.gz") for m in MODALITIES]  # BRATS_N4, per_stage
        valid, trim = d / "valid" / f"{case}.json", d / "trim" / f"{case}.json"
        stack = d / "stack" / f"{case}.h5"
        if stage == "brats_validate":
            write_validation(d / "raw", case, valid, release=release)
        elif stage == "brats_n4":
            ins = {m: raw[m] for m in MODALITIES}
            correct_case(ins, dict(zip(MODALITIES, n4_out)), n4, job["n4_threads"])
        elif stage == "brats_trim":
            write_trim(case, n4_out, raw["seg"], b["trim"]["margin"], trim)
        elif stage == "brats_stack":
            stack_from_records(case, n4_out, raw["seg"], valid, trim, stack, b["stack"], release)
        elif stage == "brats_patches":
            sample_case(stack, d / "patches" / f"{case}.h5", patches, cfg["seed"])

    row = dict((s, rs[0]) for _, s, rs in PROCESSES)[stage]
    return [(row, lambda c=c: run(c)) for c in cases], len(cases)


def rsna_stage(stage: str, work: Path, job: dict):
    cfg = job["configs"]["rsna"]["rsna"]
    d = work / "rsna"
    if stage == "rsna_metadata":
        from medflow.rsna.metadata import write_table

        def run():
            write_table(
                d / "manifest.csv",
                d / "metadata.csv",
                d / "decisions.json",
                max_age_years=cfg["metadata"]["max_age_years"],
                max_excluded_fraction=cfg["metadata"]["max_excluded_fraction"],
                threads=1,
            )

        return [("metadata", run)], job["rsna_n"]
    import pandas as pd

    from medflow.rsna.metadata import read_table
    from medflow.rsna.preprocess import PreprocessConfig, write_hdf5

    def run():
        write_hdf5(
            read_table(d / "metadata.csv"),
            pd.read_csv(d / "manifest.csv", dtype={"patientId": str}),
            d / "images.h5",
            PreprocessConfig.from_params(cfg["preprocess"]),
            threads=1,
            max_age_years=cfg["metadata"]["max_age_years"],
        )

    return [("preprocessing", run)], job["rsna_n"]


def oct_stage(stage: str, work: Path, job: dict):
    from medflow.ingest.oct import ingest

    cfg = job["configs"]["oct"]["oct"]["ingest"]
    d = work / "oct"

    def run():
        ingest(
            d / "OCT2017",
            d / "manifest.csv",
            d / "split.csv",
            val_source=cfg["val_source"],
            val_fraction=cfg["val_fraction"],
            check_pixels=cfg["check_pixels"],
            seed=job["configs"]["oct"]["seed"],
        )

    return [("ingest", run)], job["oct_n"]


def mrnet_stage(stage: str, work: Path, job: dict):
    import torch

    from medflow.ingest.mrnet import IN_PLANE
    from medflow.mrnet.augment import AugmentConfig, ExamAugmentation
    from medflow.mrnet.data import load_series, resize
    from medflow.params import from_config

    torch.set_num_threads(1)  # as in a DataLoader worker
    torch.manual_seed(job["configs"]["mrnet"]["seed"])
    train = job["configs"]["mrnet"]["mrnet"]["train"]
    size = int(train["model"]["image_size"])
    augment = ExamAugmentation.from_params(from_config(AugmentConfig, train["augment"]))
    state: dict = {}

    def load(path):
        state["x"] = torch.from_numpy(load_series(path))

    def do_resize():
        state["x"] = resize(state["x"], size)

    def do_augment():
        state["x"] = augment(state["x"])

    steps = []
    paths = sorted((work / "mrnet").glob("*.npy"))
    for path in paths:
        steps.append(("load", lambda p=path: load(p)))
        if size != IN_PLANE:  # ExamDataset resizes only then
            steps.append(("resize", do_resize))
        if augment is not None:
            steps.append(("augment", do_augment))
    return steps, len(paths)


def child(stage: str, work: Path) -> None:
    job = json.loads((work / "job.json").read_text())
    group = stage.split("_")[0]
    make = {"brats": brats_stage, "rsna": rsna_stage, "oct": oct_stage, "mrnet": mrnet_stage}[group]
    steps, items = make(stage, work, job)
    for module in LAZY_IMPORTS.get(stage, []):
        importlib.import_module(module)
    startup_cpu, startup_rss = cpu_now(), vm_hwm_mib()
    rows: dict = {}
    for row, fn in steps:
        w, c = time.perf_counter(), cpu_now()
        fn()
        r = rows.setdefault(row, {"cpu": [], "wall": []})
        r["cpu"].append(cpu_now() - c)
        r["wall"].append(time.perf_counter() - w)
    print(
        json.dumps(
            {
                "items": items,
                "rows": rows,
                "startup_cpu_s": startup_cpu,
                "startup_rss_mib": startup_rss,
                "peak_rss_mib": vm_hwm_mib(),
            }
        )
    )


def run_child(stage: str, work: Path) -> dict:
    src = str(ROOT / "src")
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{stage} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the table ---------------------------------------------------------------------------------------------


def fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    return f"{s:,.0f} s ({s / 3600:.2f} h)" if s >= 3600 else f"{s:,.0f} s ({s / 60:.1f} min)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brats", type=int, default=2, help="BraTS cases (240 x 240 x 155)")
    ap.add_argument("--rsna", type=int, default=8, help="RSNA DICOMs (1024 x 1024)")
    ap.add_argument("--oct", type=int, default=16, help="OCT JPEGs (512 x 496; a multiple of 4, at least 12)")
    ap.add_argument("--mrnet", type=int, default=8, help="MRNet plane-exams (35 slices of 256 x 256)")
    ap.add_argument("--quick", action="store_true", help="1 BraTS case, 4 DICOMs, 12 JPEGs, 3 exams")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "bench_scale.json"))
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    if args.quick:
        args.brats, args.rsna, args.oct, args.mrnet = 1, 4, 12, 3

    load_before = os.getloadavg()
    start = time.perf_counter()
    # The real-data config of each data set, merged over config/config.yaml.
    configs = {name.split("_")[0]: real_config(name) for name in CONFIGS.values()}
    config = configs["brats2020"]
    configs["brats"] = configs.pop("brats2020")
    seed = int(config["seed"])
    n4_threads = 1
    print(
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"every stage at 1 thread (N4: {n4_threads} ITK thread; config/brats2020.yaml brats.n4.threads = "
        f"{config['brats']['n4']['threads']}), each stage in a fresh process"
    )
    with tempfile.TemporaryDirectory(prefix="bench_scale.") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        cases = make_brats(work, args.brats, config)
        make_rsna(work, args.rsna, seed)
        n_oct = make_oct(work, args.oct, seed)
        make_mrnet(work, args.mrnet, seed)
        print(
            f"items made in {time.perf_counter() - t:.0f} s: {len(cases)} BraTS cases, {args.rsna} RSNA DICOMs "
            f"(JPEG baseline), {n_oct} OCT JPEGs, {args.mrnet} MRNet plane-exams of {MRNET_SLICES} slices"
        )
        job = {
            "configs": configs,
            "brats_cases": cases,
            "n4_threads": n4_threads,
            "rsna_n": args.rsna,
            "oct_n": n_oct,
        }
        (work / "job.json").write_text(json.dumps(job))
        results = {}
        for _, stage, _ in PROCESSES:
            t = time.perf_counter()
            results[stage] = run_child(stage, work)
            print(f"  {stage}: {time.perf_counter() - t:.1f} s", flush=True)

    rows, totals = [], {}
    for dataset, stage, names in PROCESSES:
        res = results[stage]
        for name in names:
            measured = res["rows"].get(name)
            row = {
                "dataset": dataset,
                "stage": name,
                "process": stage,
                "items": res["items"] if measured else 0,
                "cpu_s_per_item": sum(measured["cpu"]) / res["items"] if measured else None,
                "wall_s_per_item": sum(measured["wall"]) / res["items"] if measured else None,
                "peak_rss_mib": res["peak_rss_mib"] if measured else None,
                "startup_cpu_s": res["startup_cpu_s"],
                "startup_rss_mib": res["startup_rss_mib"],
            }
            rows.append(row)
            if measured:
                tot = totals.setdefault(dataset, {"cpu": 0.0, "wall": 0.0})
                tot["cpu"] += row["cpu_s_per_item"]
                tot["wall"] += row["wall_s_per_item"]

    projections = []
    for dataset, (n, what, factor) in FULL.items():
        items = n * factor
        cpu = totals[dataset]["cpu"] * items
        projections.append(
            {
                "dataset": dataset,
                "full_items": n,
                "item": what,
                "measured_items_per_item": factor,
                "cpu_s_per_item": totals[dataset]["cpu"] * factor,
                "total_cpu_s": cpu,
                "projected_wall_s_16_cores": cpu / CORES,
                "workflow_parallelism": PARALLEL[dataset],
            }
        )

    mrnet_size = configs["mrnet"]["mrnet"]["train"]["model"]["image_size"]
    head = f"{'data set':<11} {'stage':<18} {'items':>5} {'CPU s/item':>10} {'wall s/item':>11} {'peak RSS MiB':>12}"
    print("\n" + head + "  projected wall, 16 cores")
    print("-" * (len(head) + 26))
    for dataset, (n, what, factor) in FULL.items():
        for r in (r for r in rows if r["dataset"] == dataset):
            if r["cpu_s_per_item"] is None:
                print(f"{dataset:<11} {r['stage']:<18} {'-':>5} {'not run':>10}  (image_size {mrnet_size}: no resize)")
                continue
            print(
                f"{dataset:<11} {r['stage']:<18} {r['items']:>5} {r['cpu_s_per_item']:>10.4f} "
                f"{r['wall_s_per_item']:>11.4f} {r['peak_rss_mib']:>12.0f}"
            )
        p = next(p for p in projections if p["dataset"] == dataset)
        cpu, wall = totals[dataset]["cpu"], totals[dataset]["wall"]
        print(
            f"{dataset:<11} {'all stages':<18} {'':>5} {cpu:>10.4f} {wall:>11.4f} {'':>12}  "
            f"{n:,} {what}{' x 3 planes' if factor > 1 else ''} x {cpu:.4f} CPU s / {CORES} = "
            f"{fmt_duration(p['projected_wall_s_16_cores'])}"
        )
    startup = {s: results[s] for _, s, _ in PROCESSES}
    print(
        "\nprojection, not a measurement: every item on one core of 16, perfect parallelism, no I/O limit, "
        "no job start-up. How the workflow spreads the items:"
    )
    for p in projections:
        one_core = f" (as it runs now: {fmt_duration(p['total_cpu_s'])})" if p["dataset"] == "OCT2017" else ""
        print(f"  {p['dataset']}: {PARALLEL[p['dataset']]}{one_core}")
    print("job start-up (interpreter + the stage's imports; in no figure above), CPU s and RSS:")
    for dataset in FULL:
        each = [f"{s} {r['startup_cpu_s']:.1f} s, {r['startup_rss_mib']:.0f} MiB" for s, r in startup.items()]
        print("  " + "; ".join(e for e, (d, _, _) in zip(each, PROCESSES) if d == dataset))
    load_after = os.getloadavg()
    total = time.perf_counter() - start
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; whole run {total:.0f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "projections": projections,
                "cores": CORES,
                "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after},
                "counts": {"brats": len(cases), "rsna": args.rsna, "oct": n_oct, "mrnet": args.mrnet},
                "run_s": total,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"rows written to {out}")


if __name__ == "__main__":
    main()

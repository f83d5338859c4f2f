# Everything that is not a rule: config validation, paths, case discovery, input functions.
import functools
import os
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The library lives in src/: make it importable here (case discovery) and in every job's script,
# including jobs that SLURM starts on another node (they inherit the environment).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
# Importing medflow sets OMP_WAIT_POLICY (medflow/__init__.py) for this process and every job it starts.
from medflow import tracking  # noqa: E402
from medflow.ingest import releases  # noqa: E402
from medflow.ingest.brats import MODALITIES  # noqa: E402
from medflow.ingest.mrnet import PLANES, TASKS  # noqa: E402

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Jobs find the store through the environment, so moving tracking elsewhere reruns nothing.
os.environ.update(MLFLOW_TRACKING_URI=tracking.resolve_uri(config["mlflow"]["tracking_uri"], RESULTS))
MLFLOW_STORE = f"{RESULTS}/mlflow/store.json"

# The BraTS release of the download (config brats.release): the one place the workflow learns the
# layout; every BraTS stage asks this object (medflow/ingest/releases.py), none names a release.
BRATS_RELEASE = releases.get(str(config["brats"]["release"]))
if config["synthetic"]["enabled"] and str(config["synthetic"]["brats"].get("release", "2020")) != BRATS_RELEASE.name:
    raise ValueError(
        f"synthetic.brats.release {config['synthetic']['brats'].get('release', '2020')!r} differs from brats.release "
        f"{BRATS_RELEASE.name!r}: set both to the release the demo should write and read"
    )


wildcard_constraints:
    case=BRATS_RELEASE.case_pattern,
    modality="|".join(MODALITIES),
    task="|".join(TASKS),
    plane="|".join(PLANES),
    fold=r"all|\d+",


def is_activated(pipeline):
    """Pipelines are switched on and off in config, never by editing rules."""
    return bool(config["pipelines"][pipeline])


def synthetic():
    return bool(config["synthetic"]["enabled"])


# Where each data set's raw download lies: the synthetic copy under results/synthetic when the demo is on
# (it never writes into a user's download), the user's folder otherwise.
RAW_SUBDIR = {
    "brats": BRATS_RELEASE.raw_subdir,
    "mrnet": "MRNet-v1.0",
    "rsna": "rsna-pneumonia-detection-challenge",
    "oct": "OCT2017",
}


def raw_dir(dataset):
    if synthetic():
        return f"{RESULTS}/synthetic/{dataset}/{RAW_SUBDIR[dataset]}"
    return config[dataset]["raw_dir"]


@functools.cache
def brats_cases():
    """BraTS case ids of the release, known before any job runs so rules can fan out per case (cached: input
    functions ask for them again and again while the DAG is built)."""
    if synthetic():
        from medflow.synthetic.brats import case_ids

        cases = case_ids(config["synthetic"]["brats"])
    else:
        from medflow.ingest.brats import discover_cases

        cases = discover_cases(raw_dir("brats"), release=BRATS_RELEASE)
    excluded = set(config["brats"]["ingest"]["exclude_cases"])
    return [c for c in cases if c not in excluded]


@functools.cache
def brats_raw(case):
    """{kind: path} of a case's raw files (as found on disk in a download: .nii[.gz], case 355's seg name);
    cached: four rules ask for every case while the DAG is built."""
    from medflow.ingest.brats import raw_files

    return raw_files(raw_dir("brats"), case, synthetic(), release=BRATS_RELEASE)


# Each rules file registers its pipeline's metrics file (the one the report reads: its `headline`
# block) and any other outputs that finish it; `all` and the report collect them.
FINAL_METRICS = {}
FINAL_OUTPUTS = {}


def register_final(pipeline, metrics, outputs=()):
    if is_activated(pipeline):
        FINAL_METRICS[pipeline] = metrics
        FINAL_OUTPUTS[pipeline] = [metrics, *outputs]


def get_final_output():
    return [p for paths in FINAL_OUTPUTS.values() for p in paths]


def gpu_resource():
    return config["compute"]["gpu"]

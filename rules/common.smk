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


# >>> brats_predict_cases
@functools.cache
def brats_predict_cases():
    """Ids of the new BraTS cases to predict on (predict.brats.input), known before any job runs: the synthetic
    unlabeled set's from config, else the case folders found (validation or training ids of the release; none
    found: one error naming the folder and the patterns). Cached: input functions ask again and again."""
    if str(config["predict"]["brats"]["input"]) == "synthetic":
        from medflow.synthetic.brats import predict_case_ids

        return predict_case_ids(config["synthetic"]["brats"])
    from medflow.ingest.brats import discover_predict_cases

    return discover_predict_cases(predict_input("brats"), release=BRATS_RELEASE)


@functools.cache
def brats_predict_raw(case):
    """{modality: path} of a new case's files (no seg): a missing one is left out, so only its job fails."""
    from medflow.ingest.brats import predict_files

    synthetic_set = str(config["predict"]["brats"]["input"]) == "synthetic"
    return predict_files(predict_input("brats"), case, synthetic_set, release=BRATS_RELEASE)


# <<< brats_predict_cases


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


# Prediction on new data (config predict.<dataset>): where the unlabeled inputs lie. `synthetic` is the demo's
# unlabeled set in the real layout, written by synthetic_<dataset>_predict under results/synthetic/<dataset>/predict/.
PREDICT_SUBDIR = {
    "brats": BRATS_RELEASE.validation_subdir,
    "mrnet": "new_exams",
    "rsna": "stage_2_test_images",
    "oct": "new_scans",
}


def predict_input(dataset):
    """The folder (or CSV) to predict on for `dataset`, or "" when its prediction is off."""
    value = str(config["predict"][dataset]["input"])
    if value != "synthetic":
        return value
    if not synthetic():
        raise ValueError(f"predict.{dataset}.input is 'synthetic' but synthetic.enabled is false: name a folder or ''")
    return f"{RESULTS}/synthetic/{dataset}/predict/{PREDICT_SUBDIR[dataset]}"


def is_predicting(dataset, pipeline):
    """Prediction runs for a data set when its input is set and the pipeline that trains its model is on."""
    return is_activated(pipeline) and bool(config["predict"][dataset]["input"])


# Each predict stage registers the summary JSON of its outputs ({"n_predicted", "n_excluded", "class_mix",
# "figures"}, medflow.report) and any other files that finish it; `all` and the report's predictions section
# collect them.
FINAL_PREDICTIONS = {}


def register_predictions(pipeline, summary, outputs=()):
    if is_activated(pipeline):
        FINAL_PREDICTIONS[pipeline] = summary
        FINAL_OUTPUTS[f"{pipeline}_predict"] = [summary, *outputs]


# The bootstrap settings every *_evaluate rule passes (evaluation.cams goes only to the classifiers that draw maps,
# so changing it reruns no segmentation evaluation).
BOOTSTRAP = {k: config["evaluation"][k] for k in ("bootstrap_samples", "confidence")}


def synthetic_cfg(dataset):
    """synthetic.<dataset> without its `predict` block: the unlabeled set's size never reruns the training data."""
    return {k: v for k, v in config["synthetic"][dataset].items() if k != "predict"}


def gpu_resource():
    return config["compute"]["gpu"]

"""The RSNA config sections: the default, the tiny test config and the real-data example validate;
typos and impossible values do not."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from medflow.params import from_config
from medflow.rsna.evaluate import EvaluateParams
from medflow.rsna.predict import PredictParams
from medflow.rsna.preprocess import PreprocessConfig
from medflow.rsna.train import TrainParams
from medflow.synthetic.rsna import predict_settings, settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = str(ROOT / "config" / "schema.yaml")


def _load(*names):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for name in names:
        update_config(cfg, yaml.safe_load((ROOT / name).read_text()))
    return cfg


@pytest.mark.parametrize("extra", [(), ("tests/config/tiny.yaml",), ("config/rsna.yaml",)])
def test_configs_validate_and_build(extra):
    cfg = _load(*extra)
    validate(copy.deepcopy(cfg), schema=SCHEMA)
    PreprocessConfig.from_params(cfg["rsna"]["preprocess"])
    from_config(TrainParams, {"variant": "with_metadata", "train": cfg["rsna"]["train"]}).train.model_config()
    # as the rules pass them: evaluation.cams apart from the bootstrap settings
    bootstrap = {k: v for k, v in cfg["evaluation"].items() if k != "cams"}
    evaluate = {"evaluate": cfg["rsna"]["evaluate"], "bootstrap": bootstrap, "cams": cfg["evaluation"]["cams"]}
    assert from_config(EvaluateParams, evaluate).cams == cfg["evaluation"]["cams"]
    ev = cfg["rsna"]["evaluate"]
    predict = {"threshold": ev["threshold"], "batch_size": ev["batch_size"], "cams": cfg["predict"]["cams"]}
    from_config(PredictParams, predict)
    settings(cfg["synthetic"]["rsna"])
    assert predict_settings(cfg["synthetic"]["rsna"])["n_images"] >= 1


@pytest.mark.parametrize(
    "path, value",
    [
        (("rsna", "train", "epoch"), 3),  # a typo
        (("rsna", "preprocess", "window", "mode"), "auto"),
        (("rsna", "preprocess", "clahe", "tiles"), [8]),
        (("synthetic", "rsna", "n_patient"), 10),
        (("synthetic", "rsna", "predict", "n_image"), 10),
        (("predict", "rsna", "checkpiont"), ""),
    ],
)
def test_typos_and_bad_values_are_rejected(path, value):
    cfg = _load()
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(WorkflowError):
        validate(cfg, schema=SCHEMA)


def test_fixed_window_needs_a_width():
    cfg = _load()
    cfg["rsna"]["preprocess"]["window"].update(mode="fixed", width=0)
    with pytest.raises(WorkflowError):
        validate(cfg, schema=SCHEMA)

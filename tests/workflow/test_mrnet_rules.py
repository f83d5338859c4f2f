"""The MRNet rules as Snakemake plans them (dry runs): every task x plane x fold model, stacking per task."""

import yaml

from tests.workflow.smk import planned_jobs, run_snakemake

SUMMARY = "results/mrnet/summary/summary.csv"


def _plan(tmp_path, override=None):
    files = []
    if override:
        files.append(tmp_path / "override.yaml")
        files[0].write_text(yaml.safe_dump(override))
    out = run_snakemake(tmp_path / "wd", "-n", SUMMARY, configfiles=files).stdout
    return planned_jobs(out), out


def test_out_of_fold_plans_nine_models_per_fold(tmp_path):
    jobs, out = _plan(tmp_path, {"mrnet": {"ingest": {"folds": 3}, "evaluate": {"fit_on": "out_of_fold"}}})
    assert jobs["mrnet_train"] == 3 * 3 * (3 + 1), "task x plane x (k folds + all)"
    assert jobs["mrnet_evaluate"] == 3 and jobs["mrnet_summary"] == 1 and jobs["mrnet_ingest"] == 1
    assert "results/mrnet/train/meniscus/coronal/fold_2/predictions.csv" in out
    assert "results/mrnet/train/meniscus/coronal/fold_3/" not in out, "folds are 0..k-1 and all"


def test_in_sample_stacking_plans_only_the_all_train_models(tmp_path):
    jobs, out = _plan(tmp_path, {"mrnet": {"evaluate": {"fit_on": "in_sample"}}})
    assert jobs["mrnet_train"] == 9
    assert "results/mrnet/train/acl/sagittal/fold_all/model.pt" in out
    assert "fold_0" not in out

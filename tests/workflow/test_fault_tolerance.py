"""--keep-going with one malformed case: the other cases and the other pipelines complete, and the failed
job's log names the file and the problem."""

from tests.workflow.smk import run_snakemake

RAW = "results/synthetic/brats/MICCAI_BraTS2020_TrainingData"


def test_keep_going_with_one_truncated_case(tmp_path):
    run_snakemake(tmp_path, "synthetic_brats")
    cases = sorted(p.name for p in (tmp_path / RAW).iterdir() if p.is_dir())
    bad = cases[0]
    t1 = tmp_path / RAW / bad / f"{bad}_t1.nii"
    t1.write_bytes(t1.read_bytes()[:400])  # a download cut short

    targets = [f"results/brats/stack/{c}.h5" for c in cases] + ["results/rsna/metadata/metadata.csv"]
    proc = run_snakemake(tmp_path, "--keep-going", *targets, check=False)
    assert proc.returncode != 0, "the malformed case must fail"
    assert not (tmp_path / f"results/brats/stack/{bad}.h5").exists()
    for case in cases[1:]:
        assert (tmp_path / f"results/brats/stack/{case}.h5").exists(), f"{case} should have finished"
    assert (tmp_path / "results/rsna/metadata/metadata.csv").exists(), "another pipeline finished"

    logs = [p for p in (tmp_path / "results/logs").rglob(f"*{bad}*.log") if "ERROR" in p.read_text()]
    assert len(logs) == 1, "exactly the failed job's log reports the error"
    errors = [ln for ln in logs[0].read_text().splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1 and f"{bad}_t1.nii" in errors[0], errors
    assert "Traceback" not in logs[0].read_text(), "one clear line, not a traceback"

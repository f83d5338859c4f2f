"""GPU-aware scheduling: jobs claiming `gpu` never share the GPU while CPU jobs run beside them, and
every rule that puts work on a torch device claims the GPU (`gpu_resource()`) and the training threads.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.workflow import workflow_rules

REPO = workflow_rules.REPO
GPU_SECONDS = 2


def _timed_sleep(seconds):
    """Shell command for a Snakemake rule: sleep `seconds`, writing the start and end times to {output}."""
    return f"date +%s.%N > {{output}}.tmp; sleep {seconds}; date +%s.%N >> {{output}}.tmp; mv {{output}}.tmp {{output}}"


# Two independent GPU jobs and one long CPU job: with room for all three, only the `gpu` limit
# can keep the GPU jobs apart, and the CPU job must run beside both of them.
SNAKEFILE = textwrap.dedent(
    f"""
    rule all:
        input: "gpu_a.txt", "gpu_b.txt", "cpu_long.txt"

    rule gpu_job:
        output: "gpu_{{name}}.txt"
        wildcard_constraints: name="a|b"
        threads: 1
        resources: gpu=1
        shell: "{_timed_sleep(GPU_SECONDS)}"

    rule cpu_long:
        output: "cpu_long.txt"
        threads: 1
        shell: "{_timed_sleep(4 * GPU_SECONDS)}"
    """
)


def _interval(path):
    start, end = map(float, Path(path).read_text().split())
    return start, end


def _overlap(a, b):
    return a[0] < b[1] and b[0] < a[1]


def _run(tmp_path, *args):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ("gpu_a", "gpu_b", "cpu_long")
    return {n: _interval(tmp_path / f"{n}.txt") for n in names}


@pytest.mark.parametrize(
    "args",
    [
        ["--cores", "8", "--resources", "gpu=1"],
        # The workstation profile (`make demo`) sets gpu=1 itself.
        ["--cores", "8", "--workflow-profile", str(REPO / "profiles" / "local")],
    ],
    ids=["resources-gpu=1", "profile-local"],
)
def test_gpu_jobs_run_one_at_a_time_beside_cpu_jobs(tmp_path, args):
    t = _run(tmp_path, *args)
    assert not _overlap(t["gpu_a"], t["gpu_b"]), f"two gpu=1 jobs ran at once: {t}"
    for gpu in ("gpu_a", "gpu_b"):
        assert _overlap(t[gpu], t["cpu_long"]), f"the CPU job did not run beside {gpu}: {t}"


def test_two_gpus_let_two_gpu_jobs_run_at_once(tmp_path):
    """The control: the same jobs overlap when the limit allows it, so the check above can fail."""
    t = _run(tmp_path, "--cores", "8", "--resources", "gpu=2")
    assert _overlap(t["gpu_a"], t["gpu_b"]), f"gpu=2 should let both GPU jobs run together: {t}"


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    # Distinct values, so a rule that hard-codes 1 GPU or 2 threads is caught.
    compute = {"gpu": 3, "train_threads": 5, "bf16": True}
    return workflow_rules.declared_rules(
        configfiles=[REPO / "config" / "config.yaml", REPO / "tests" / "config" / "tiny.yaml"],
        config={"compute": compute},
        workdir=tmp_path_factory.mktemp("rules"),
    )


def test_rules_that_use_a_torch_device_claim_the_gpu_and_training_threads(rules):
    device_rules = {}
    for name, rule in rules.items():
        if rule["script"]:
            hits = workflow_rules.script_uses_device(rule["script"])
            if hits:
                device_rules[name] = hits
    # Each training rule trains with medflow.train on a device: the detector must see all of them.
    training = {n for n in rules if "train" in n.split("_")}
    assert training, "no training rule found in the workflow"
    assert training <= set(device_rules), f"device detection missed training rules {training - set(device_rules)}"

    problems = []
    for name, hits in sorted(device_rules.items()):
        res = rules[name]["resources"]
        if res.get("gpu") != 3:
            problems.append(
                f"{name}: picks a device ({', '.join(hits)}) but declares gpu={res.get('gpu')}, not gpu=gpu_resource()"
            )
        if res.get("_cores") != 5:
            problems.append(f"{name}: threads={res.get('_cores')}, not config compute.train_threads")
    for name, rule in sorted(rules.items()):
        if name not in device_rules and rule["resources"].get("gpu"):
            problems.append(f"{name}: claims gpu={rule['resources']['gpu']} but never picks a torch device")
    assert not problems, "\n".join(problems)

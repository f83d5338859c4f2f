"""The pins users install from (requirements.txt, the lock, pyproject, envs/*.yaml) agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def requirements():
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def test_requirements_are_all_pinned():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines and len(requirements()) == len(lines), "every requirement must be pinned with =="


def test_lock_contains_every_pin():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name, version in requirements().items():
        assert lock.get(name) == version, f"requirements.lock has {name}=={lock.get(name)}, requirements.txt {version}"


def test_pyproject_matches_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    assert deps == requirements()


def test_conda_envs_mirror_requirements():
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "envs/*.yaml missing"
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert _pins(pip) == requirements(), f"{env.name} differs from requirements.txt"
        assert "python=3.11" in spec["dependencies"]

"""What the workflow declares, rule by rule, read through Snakemake's own parser (not by grepping).

`declared_rules()` loads /work/main/Snakefile in a child process (the rules files change os.environ
and sys.path when they load) and returns, per rule: its script (absolute path or None), whether it
is a localrule, its fixed resources (`_cores` is `threads`), and its log, benchmark and output paths
as written in the rule (relative to the working directory, wildcards as `{name}` without their
constraints). Values computed per job (callables) come back as the string "<callable>".

`script_uses_device(path)` says whether a script puts work on a torch device: the script or any
medflow module it imports (transitively, any import anywhere in a file) calls
`medflow.train.select_device`, `torch.device(...)` or `.cuda()`. The library's rule is that
training and inference pick their device with select_device (docs/conventions.md).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SNAKEFILE = REPO / "Snakefile"
# Where select_device is defined: importing medflow.train reaches it without choosing a device.
DEVICE_MODULE = SRC / "medflow" / "train" / "device.py"


def declared_rules(configfiles=(), config=None, workdir=None) -> dict[str, dict]:
    """{rule name: {"script", "local", "resources", "log", "benchmark", "output"}} as Snakemake parses the
    workflow: "log" and "output" are lists of paths, "benchmark" a path or None."""
    args = {"configfiles": [str(c) for c in configfiles], "config": config or {}, "workdir": str(workdir or REPO)}
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading the workflow failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _paths(files) -> list[str]:
    """Paths as the rule wrote them: `{case,BraTS20_Training_\\d+}` (a constraint Snakemake adds) reads `{case}`."""
    from snakemake.io import strip_wildcard_constraints

    return [strip_wildcard_constraints(str(f)) for f in files]


def _dump(args):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[Path(c) for c in args["configfiles"]], config=args["config"]),
            storage_settings=StorageSettings(),
            snakefile=SNAKEFILE,
            workdir=Path(args["workdir"]),
        )
        out = {}
        for rule in wf._workflow.rules:
            script = None
            if rule.script:
                script = str((Path(rule.basedir) / rule.script).resolve())
            resources = {
                name: ("<callable>" if res.is_evaluable() else res.value)
                for name, res in rule.resources.items()
                if name != "tmpdir"
            }
            out[rule.name] = {
                "script": script,
                "local": rule.name in wf._workflow._localrules or bool(rule.norun),
                "resources": resources,
                "log": _paths(rule.log),
                "benchmark": _paths([rule.benchmark])[0] if rule.benchmark else None,
                "output": _paths(rule.output),
            }
    print(json.dumps(out))


def _module_file(name: str) -> Path | None:
    if not name.startswith("medflow"):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(SRC).with_suffix("").parts[: -node.level]
                mod = ".".join(pkg + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            names.add(mod)
            # `from medflow import io` imports the module medflow.io
            names.update(f"{mod}.{a.name}" for a in node.names)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


@cache
def _calls_device(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in ("select_device", "cuda"):
            return True
        if name == "device" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch":
            return True
    return False


def script_uses_device(script: str | os.PathLike) -> list[str]:
    """The files (script or medflow modules it reaches) that pick a torch device; empty if none."""
    seen, todo, hits = set(), [Path(script)], []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if _calls_device(path) and path != DEVICE_MODULE:
            hits.append(str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path))
        todo.extend(f for f in map(_module_file, _imports(path)) if f is not None)
    return sorted(hits)


if __name__ == "__main__":
    _dump(json.loads(sys.argv[1]))

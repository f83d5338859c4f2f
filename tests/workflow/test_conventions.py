"""One stage, one name: the stage table in docs/conventions.md against the workflow as Snakemake itself
parses it (default config, every pipeline on, synthetic data on), and the table against the naming rule
it documents. Also: only tests under tests/workflow/ start Snakemake."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from medflow import tracking
from tests.workflow import workflow_rules

REPO = workflow_rules.REPO
CONVENTIONS = REPO / "docs" / "conventions.md"
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
COLUMNS = ["pipeline", "rule", "script", "module", "config", "results", "log", "benchmark"]
NONE = "—"
# Rows of the workflow itself, not of a pipeline: their results and config keys have names of their own.
WORKFLOW = "workflow"


def _cells(line: str) -> list[str]:
    return [c.strip().strip("`") for c in line.strip().strip("|").split("|")]


def stage_table(markdown: str) -> dict[str, dict[str, str | None]]:
    """{rule: {column: value, None for `—`}} from the table whose header is `| pipeline | rule | ...`."""
    lines = markdown.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and _cells(line)[:2] == ["pipeline", "rule"]]
    assert len(starts) == 1, f"{CONVENTIONS}: expected one stage table, found {len(starts)}"
    assert _cells(lines[starts[0]]) == COLUMNS, f"stage table columns: {_cells(lines[starts[0]])}"
    rows: dict[str, dict[str, str | None]] = {}
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), f"stage table row with {len(cells)} cells: {line}"
        row = {k: (None if v == NONE else v) for k, v in zip(COLUMNS, cells)}
        assert row["rule"] not in rows, f"rule {row['rule']} twice in the stage table"
        rows[row["rule"]] = row
    return rows


TABLE = stage_table(CONVENTIONS.read_text())


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    """Every rule of the workflow with the default config (the Snakefile's own configfile)."""
    return workflow_rules.declared_rules(workdir=tmp_path_factory.mktemp("conventions"))


def _config_has(dotted: str) -> bool:
    node = CONFIG
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _imported_modules(script: Path) -> set[str]:
    """Modules a script imports by name: `import a.b` -> a.b; `from a.b import c` -> a.b and a.b.c."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_table_and_workflow_have_the_same_rules(rules):
    in_workflow = set(rules) - {"all", "predict"}  # the two target rules
    assert in_workflow == set(TABLE), (
        f"rules missing from the table: {sorted(in_workflow - set(TABLE))}; "
        f"rows that are no rule: {sorted(set(TABLE) - in_workflow)}"
    )


@pytest.mark.parametrize("name", sorted(TABLE))
def test_rule_matches_its_row(rules, name):
    if name not in rules:
        pytest.fail(f"{name}: in the stage table, not in the workflow")
    row, rule = TABLE[name], rules[name]
    problems = []
    script = Path(rule["script"]).relative_to(REPO).as_posix() if rule["script"] else None
    if script != row["script"]:
        problems.append(f"script {script}, table {row['script']}")
    if rule["log"] != [row["log"]]:
        problems.append(f"log {rule['log']}, table {row['log']}")
    if rule["benchmark"] != row["benchmark"]:
        problems.append(f"benchmark {rule['benchmark']}, table {row['benchmark']}")
    outside = [o for o in rule["output"] if not o.startswith(row["results"])]
    if not rule["output"] or outside:
        problems.append(f"outputs outside {row['results']}: {outside or 'no outputs'}")
    if workflow_rules._module_file(row["module"]) is None:
        problems.append(f"module {row['module']} does not exist under src/")
    elif script and row["module"] not in _imported_modules(REPO / script):
        problems.append(f"{script} does not import from {row['module']}")
    if row["config"] is not None and not _config_has(row["config"]):
        problems.append(f"config key {row['config']} is not in config/config.yaml")
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_row_follows_the_naming_rule(name):
    """The table itself: <pipeline>_<stage> names the script, the log, the benchmark (mirroring the log),
    the results folder and the config key."""
    row = TABLE[name]
    problems = []
    if row["pipeline"] != WORKFLOW and not name.startswith(f"{row['pipeline']}_"):
        problems.append(f"rule does not start with its pipeline {row['pipeline']}_")
    if row["script"] != f"workflow/scripts/{name}.py":
        problems.append(f"script {row['script']}")
    if not re.fullmatch(rf"results/logs/{name}(/[^/]+)?\.log", row["log"] or ""):
        problems.append(f"log {row['log']}: not results/logs/{name}.log or results/logs/{name}/<wildcards>.log")
    mirror = re.sub(r"\.log$", ".tsv", (row["log"] or "").replace("results/logs/", "results/benchmarks/", 1))
    if row["benchmark"] not in (None, mirror):
        problems.append(f"benchmark {row['benchmark']}: not {mirror}")
    if row["pipeline"] != WORKFLOW:
        if row["results"] != f"results/{name.replace('_', '/')}/":
            problems.append(f"results {row['results']}")
        # Prediction on new data is configured per data set (predict.<data set>: brats, mrnet, rsna, oct).
        predict = f"predict.{row['pipeline'].split('_')[0]}" if name == f"{row['pipeline']}_predict" else None
        if row["config"] not in (None, name.replace("_", "."), predict):
            problems.append(f"config {row['config']}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_pipelines_switched_in_config_are_the_tracked_pipelines_of_the_table():
    switched = set(CONFIG["pipelines"])
    assert switched == set(tracking.EXPERIMENTS), "one MLflow experiment per pipeline"
    assert switched <= {row["pipeline"] for row in TABLE.values()}


def test_n4_per_modality_log_is_the_documented_one():
    note = re.search(
        r"`brats\.n4\.per_modality: true` runs per case and modality: log\s+`([^`]+)`", CONVENTIONS.read_text()
    )
    assert note, "docs/conventions.md: the per_modality note is gone"
    rules = workflow_rules.declared_rules(config={"brats": {"n4": {"per_modality": True}}})
    n4 = rules["brats_n4"]
    assert n4["log"] == [note.group(1)]
    assert n4["benchmark"] == note.group(1).replace("results/logs/", "results/benchmarks/").replace(".log", ".tsv")
    assert all(o.startswith(TABLE["brats_n4"]["results"]) for o in n4["output"])


def test_per_case_prep_writes_the_per_stage_files_and_the_documented_log():
    note = re.search(
        r"`brats_prep` \(script\s+`([^`]+)`, module `([^`]+)`\).*?log `([^`]+)`", CONVENTIONS.read_text(), re.S
    )
    assert note, "docs/conventions.md: the brats.jobs per_case note is gone"
    rules = workflow_rules.declared_rules(config={"brats": {"jobs": "per_case"}})
    stages = ("brats_validate", "brats_n4", "brats_trim", "brats_stack", "brats_patches")
    assert not set(stages) & set(rules), "per_case replaces the per-stage rules"
    prep = rules["brats_prep"]
    assert Path(prep["script"]).relative_to(REPO).as_posix() == note.group(1)
    assert note.group(2) in _imported_modules(REPO / note.group(1))
    assert prep["log"] == [note.group(3)]
    folders = {TABLE[s]["results"] for s in stages if s != "brats_n4"}  # the N4 volumes stay temporary
    assert {next(f for f in folders if o.startswith(f)) for o in prep["output"]} == folders


# What starts Snakemake from a test: the helpers here, its Python API or CLI, `python -m snakemake`.
STARTERS = ("tests.workflow.smk", "tests.workflow.workflow_rules", "snakemake.api", "snakemake.cli")


def _starts_snakemake(path: Path) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Constant) and node.value == "snakemake":  # a command line
            hits.append(f"line {node.lineno}: the string 'snakemake'")
        hits += [f"line {node.lineno}: imports {n}" for n in names if n.startswith(STARTERS)]
    return hits


def test_only_workflow_tests_start_snakemake():
    here = Path(__file__).resolve().parent
    found = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        if not path.resolve().is_relative_to(here):
            hits = _starts_snakemake(path)
            if hits:
                found[str(path.relative_to(REPO))] = hits
    assert not found, f"tests outside tests/workflow/ that start Snakemake (move them there): {found}"


def test_the_starter_check_sees_a_snakemake_run(tmp_path):
    """The check above can fail: it finds each way of starting Snakemake."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import subprocess\nfrom tests.workflow.smk import run_snakemake\n"
        "from snakemake.api import SnakemakeApi\nsubprocess.run(['python', '-m', 'snakemake'])\n"
        "from snakemake.utils import validate\n"
    )
    assert [h.split(": ", 1)[1] for h in _starts_snakemake(probe)] == [
        "imports tests.workflow.smk",
        "imports tests.workflow.smk.run_snakemake",
        "imports snakemake.api",
        "imports snakemake.api.SnakemakeApi",
        "the string 'snakemake'",
    ]

"""Plant each known bug in a fresh copy of the repository and check that the unit tests catch it.

Every ``dev/bugs/*.json`` lists bugs a medical-imaging result is often wrong by, each as a one-line
description, an exact source excerpt to replace (occurring once) and the tests that must fail with it:

    [{"bug": "...", "file": "src/medflow/...", "old": "...", "new": "...", "tests": ["tests/..."]}]

For each bug the script copies the tracked tree to a scratch folder, applies the replacement, runs the
named tests there (``PYTHONPATH`` = that copy's ``src``) and expects them to fail; the same tests must pass
on an unmodified copy first. Run by hand (``make plant-bugs``), never in CI: it runs the tests once per bug.

    python dev/plant_bugs.py [NAME_FILTER]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    tar = subprocess.Popen(
        ["tar", "cf", "-", "--null", "-T", "-"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    untar = subprocess.Popen(["tar", "xf", "-", "-C", str(dest)], stdin=tar.stdout)
    tar.stdin.write(files)
    tar.stdin.close()
    if untar.wait() or tar.wait():
        raise RuntimeError("copying the tree failed")


def run_tests(tree: Path, tests: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED") or " passed" in ln or " failed" in ln]
    return proc.returncode, time.perf_counter() - start, "; ".join(lines[-2:])


def load_bugs(name_filter: str = "") -> list[dict]:
    bugs = []
    for path in sorted((ROOT / "dev" / "bugs").glob("*.json")):
        for bug in json.loads(path.read_text()):
            if name_filter.lower() in bug["bug"].lower():
                bugs.append({**bug, "group": path.stem})
    return bugs


def main(argv: list[str]) -> int:
    bugs = load_bugs(argv[1] if len(argv) > 1 else "")
    if not bugs:
        print("no bugs listed in dev/bugs/*.json")
        return 1
    ok = True
    with tempfile.TemporaryDirectory(prefix="medflow-plant-") as scratch:
        clean = Path(scratch) / "clean"
        clean.mkdir()
        copy_tree(clean)
        tests = sorted({t for b in bugs for t in b["tests"]})
        rc, seconds, summary = run_tests(clean, tests)
        print(f"unmodified tree: {'pass' if rc == 0 else 'FAIL'} ({seconds:.0f} s) {summary}")
        if rc != 0:
            return 1
        for i, bug in enumerate(bugs):
            tree = Path(scratch) / f"bug{i}"
            tree.mkdir()
            copy_tree(tree)
            path = tree / bug["file"]
            text = path.read_text()
            if text.count(bug["old"]) != 1:
                print(
                    f"[{bug['group']}] {bug['bug']}: the excerpt occurs {text.count(bug['old'])} times in {bug['file']}"
                )
                ok = False
                continue
            path.write_text(text.replace(bug["old"], bug["new"]))
            rc, seconds, summary = run_tests(tree, bug["tests"])
            caught = rc != 0
            ok &= caught
            print(f"[{bug['group']}] {'caught' if caught else 'MISSED'} ({seconds:.0f} s): {bug['bug']}\n    {summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

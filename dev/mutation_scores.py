"""Mutation score per module from the last ``mutmut run`` (run in the repository root, after it).

Score = killed / (mutants - equivalent), where killed counts mutants a test failed on (or that timed out
or crashed) and equivalent mutants are those listed in docs/testing.md's "Equivalent mutants" table (a
backticked mutant name in the first column): changes no input can observe, judged by hand.

    python dev/mutation_scores.py [--min 90]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETECTED = {"killed", "timeout", "segfault"}


def results() -> dict[str, str]:
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if "__mutmut_" in line)
    return {name: status for name, status in pairs}


def module_of(mutant: str) -> str:
    # medflow.pkg.mod.x_func__mutmut_3 or medflow.pkg.mod.xǁClassǁmethod__mutmut_3
    return re.split(r"\.x(?:_|ǁ)", mutant, maxsplit=1)[0]


def equivalents(doc: Path) -> set[str]:
    if not doc.exists():
        return set()
    text = doc.read_text().split("## Equivalent mutants", 1)
    return set(re.findall(r"^\|\s*`([^`]+__mutmut_\d+)`", text[1], flags=re.M)) if len(text) == 2 else set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--min", type=float, default=90.0, help="target per module, percent of non-equivalent mutants killed"
    )
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "testing.md")
    args = ap.parse_args()
    status = results()
    if not status:
        print("no mutmut results: run `mutmut run` first")
        return 1
    equiv = equivalents(args.doc)
    unknown = equiv - set(status)
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, st in sorted(status.items()):
        mod = module_of(name)
        c = by_module[mod]
        c["mutants"] += 1
        if st in DETECTED:
            c["killed"] += 1  # a listed "equivalent" that a test kills was not equivalent after all
        elif name in equiv:
            c["equivalent"] += 1
        else:
            c["survived"] += 1
            survivors[mod].append(f"{name} ({st})")
    print("| module | mutants | killed | survived | equivalent | score |")
    print("|---|---:|---:|---:|---:|---:|")
    ok = True
    for mod, c in sorted(by_module.items()):
        judged = c["mutants"] - c["equivalent"]
        score = 100.0 * c["killed"] / judged if judged else 100.0
        ok &= score >= args.min
        print(f"| `{mod}` | {c['mutants']} | {c['killed']} | {c['survived']} | {c['equivalent']} | {score:.1f}% |")
    for mod, names in sorted(survivors.items()):
        print(f"\nsurviving in {mod}:\n  " + "\n  ".join(names))
    if unknown:
        print(
            f"\n{len(unknown)} mutants listed as equivalent are not in the results (renumbered?): {sorted(unknown)[:5]}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""A benchmark run against this checkout and against an earlier commit, interleaved, in one run.

Run by hand (not collected by pytest), from the checkout's root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_ab .venv/bin/python tests/bench/ab.py \\
        main~3 bench_import.py --rounds 3 -- --repeat 1

It checks out BASE (any commit) into a temporary git worktree beside nothing else, shares this
checkout's benchmark data (`.kahn/bench/`, so both sides read the very same archive), then runs the
benchmark in each tree in turn, round after round, so that a machine whose speed drifts drifts for
both. Each side gets its own database (DATABASE_URL with `_base` or `_head` appended). Every ratio
the benchmark prints (the last figure of a table row, the figure of a MET/MISSED line) is reported
as its median per side, with the change from base to head.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]

# A table row: a label, then figures; its ratio is the last. A verdict: "MET  text: 1.23 x".
TABLE_ROW = re.compile(r"^(?P<label>\S.*?\S)\s{2,}(?:[\d,.]+\s+)*(?P<value>\d[\d,]*\.?\d*)\s*$")
VERDICT = re.compile(r"^(?:MET|MISSED)\s+(?P<label>.*):\s*(?P<value>\d[\d,]*\.?\d*)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", help="the commit to compare with (a branch, tag or hash)")
    parser.add_argument("bench", help="a file of tests/bench/, e.g. bench_import.py")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    # After "--": the benchmark's own arguments.
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    # Stopped from outside, it still removes its worktree (the `finally` below).
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit("ab.py: stopped"))
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("ab.py: set DATABASE_URL to a PostgreSQL database name it may suffix and recreate")

    with tempfile.TemporaryDirectory(prefix="kahn-ab-") as scratch:
        base_tree = Path(scratch) / "base"
        git("worktree", "add", "--detach", "--quiet", str(base_tree), options.base)
        try:
            (PROJECT / ".kahn" / "bench").mkdir(parents=True, exist_ok=True)
            (base_tree / ".kahn").mkdir()
            (base_tree / ".kahn" / "bench").symlink_to(PROJECT / ".kahn" / "bench")
            trees = {"base": base_tree, "head": PROJECT}
            figures: dict[str, dict[str, list[float]]] = {side: defaultdict(list) for side in trees}
            for round_number in range(1, options.rounds + 1):
                for side, tree in trees.items():
                    print(f"--- round {round_number}, {side} ({tree})", flush=True)
                    output = run_bench(tree, options.bench, bench_args, f"{url}_{side}")
                    for label, value in ratios(output):
                        figures[side][label].append(value)
        finally:
            git("worktree", "remove", "--force", str(base_tree))

    print()
    print(f"medians of {options.rounds} interleaved rounds; base = {options.base}, head = this checkout")
    print(f"{'':<52}{'base':>10}{'head':>10}{'change':>9}")
    for label in figures["head"]:
        base_values, head_values = figures["base"].get(label), figures["head"][label]
        head = statistics.median(head_values)
        if not base_values:
            print(f"{label[:52]:<52}{'-':>10}{head:>10.3f}")
            continue
        base = statistics.median(base_values)
        change = f"{100 * (head - base) / base:+.0f}%" if base else ""
        print(f"{label[:52]:<52}{base:>10.3f}{head:>10.3f}{change:>9}")


def git(*args: str) -> None:
    subprocess.run(["git", "-C", str(PROJECT), *args], check=True)


def run_bench(tree: Path, bench: str, args: list[str], url: str) -> str:
    """One run of the benchmark in `tree`, with this interpreter; its output, also shown."""
    result = subprocess.run(
        [sys.executable, str(tree / "tests" / "bench" / bench), *args],
        cwd=tree,
        env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        sys.exit(f"ab.py: {bench} failed in {tree}:\n{result.stderr}")
    return result.stdout


def ratios(output: str) -> list[tuple[str, float]]:
    found = []
    for line in output.splitlines():
        match = VERDICT.match(line) or TABLE_ROW.match(line)
        if match and not line.startswith(("round ", "---")):
            found.append((match["label"], float(match["value"].replace(",", ""))))
    return found


if __name__ == "__main__":
    main()

"""What a new user gets: the README's shortest commands, every default taken, on each GLUE task.

    ytune extract --task TASK --data-dir GLUE
    ytune train --cache PATH

run as a user runs them (subprocesses, the last stdout line of each), beside an earlier run of the
same commands (--baseline: the defaults before a change, RESULTS.md 5d). These figures are what
README.md and RESULTS.md report for the defaults: a default measured on other settings than a
user gets shows up here, not in a test. Each finished task is appended to --results; a rerun skips
the tasks already there.

    python benchmarks/bench_defaults.py --results benchmarks/results/defaults.jsonl \
        --baseline benchmarks/results/defaults-last4.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table

HERE = Path(__file__).resolve().parent

METRIC = {"sst2": "accuracy", "stsb": "pearson", "mrpc": "f1", "cola": "mcc", "rte": "accuracy"}


def ytune(*args: str) -> list[str]:
    """The stdout lines of a `ytune` command; its stderr on failure."""
    run = subprocess.run([sys.executable, "-m", "ytune.cli", *args], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"ytune {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return run.stdout.strip().splitlines()


def read(path: Path) -> dict[str, dict]:
    """A results file's rows by task."""
    return {r["task"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--tasks", default="stsb,mrpc,rte,cola,sst2")
    p.add_argument("--cache-dir", help="where extract caches (default: ytune's default root)")
    p.add_argument("--runs", default="runs/defaults")
    p.add_argument("--results", type=Path, default=HERE / "results/defaults.jsonl")
    p.add_argument("--baseline", type=Path, default=HERE / "results/defaults-last4.jsonl")
    a = p.parse_args()
    done, baseline = read(a.results), read(a.baseline)
    for task in a.tasks.split(","):
        if task in done:
            continue
        start = time.perf_counter()
        *_, summary, path = ytune(
            "extract",
            "--task",
            task,
            "--data-dir",
            a.glue,
            *(["--cache-dir", a.cache_dir] if a.cache_dir else []),
        )
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = json.loads(ytune("train", "--cache", path, "--out", f"{a.runs}/{task}")[-1])
        row = {
            "task": task,
            "metric": METRIC[task],
            "value": metrics[METRIC[task]],
            "extract_s": round(extract_s, 1),
            "train_s": round(time.perf_counter() - start, 1),
            "cache": path,
            "extract_summary": summary,
        }
        with a.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[task] = row
    rows = []
    for task, r in done.items():
        before = baseline.get(task, {}).get("value", math.nan)
        rows.append(
            [
                task,
                r["metric"],
                f"{r['value']:.4f}",
                f"{before:.4f}",
                f"{r['value'] - before:+.4f}",
                f"{r['extract_s']:.0f}",
                f"{r['train_s']:.0f}",
            ]
        )
    print(
        markdown_table(
            ["task", "metric", "every default", "baseline", "difference", "extract s", "train s"], rows
        )
    )


if __name__ == "__main__":
    main()

"""What a new user gets: the README's shortest commands, every default taken, on each GLUE task.

    ytune extract --task TASK --data-dir GLUE
    ytune train --cache PATH

run as a user runs them (subprocesses, the last stdout line of each), against the figures that
benchmarks/RESULTS.md reports for the default head. The defaults are right when the two agree:
a default that was measured on other settings than a user gets shows up here, not in a test.
Each finished task is appended to --results; a rerun skips the tasks already there.

    python benchmarks/bench_defaults.py --tasks stsb,mrpc,rte,cola,sst2 --results defaults.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table

# RESULTS.md section 5a: the default head on the full training splits, best validation epoch.
REPORTED = {"sst2": 0.8589, "stsb": 0.8148, "mrpc": 0.8259, "cola": 0.2220, "rte": 0.5379}
METRIC = {"sst2": "accuracy", "stsb": "pearson", "mrpc": "f1", "cola": "mcc", "rte": "accuracy"}


def ytune(*args: str) -> str:
    """The last stdout line of a `ytune` command; its stderr on failure."""
    run = subprocess.run([sys.executable, "-m", "ytune.cli", *args], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"ytune {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return run.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--tasks", default="stsb,mrpc,rte,cola,sst2")
    p.add_argument("--cache-dir", help="where extract caches (default: ytune's default root)")
    p.add_argument("--runs", default="runs/defaults")
    p.add_argument("--results", default="defaults.jsonl")
    a = p.parse_args()
    results = Path(a.results)
    done = (
        {r["task"]: r for r in map(json.loads, results.read_text().splitlines())} if results.exists() else {}
    )
    for task in a.tasks.split(","):
        if task in done:
            continue
        start = time.perf_counter()
        path = ytune(
            "extract",
            "--task",
            task,
            "--data-dir",
            a.glue,
            *(["--cache-dir", a.cache_dir] if a.cache_dir else []),
        )
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = json.loads(ytune("train", "--cache", path, "--out", f"{a.runs}/{task}"))
        row = {"task": task, "metric": METRIC[task], "value": metrics[METRIC[task]], "reported": REPORTED[task],
               "extract_s": round(extract_s, 1), "train_s": round(time.perf_counter() - start, 1)}  # fmt: skip
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[task] = row
    rows = [[r["task"], r["metric"], f"{r['value']:.4f}", f"{r['reported']:.4f}", f"{r['value'] - r['reported']:+.4f}",
             f"{r['train_s']:.0f}"] for r in done.values()]  # fmt: skip
    print(markdown_table(["task", "metric", "defaults", "RESULTS.md", "difference", "train s"], rows))


if __name__ == "__main__":
    main()

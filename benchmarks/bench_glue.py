"""Accuracy on the GLUE tasks in ../shared/data with the default encoder: Y-Tuning against the
linear probe and the majority class, with tunable parameters and training seconds per epoch.

Each task is extracted once (cached under --cache-dir, reused on reruns), then a Y-Tuning head and
the probe train in one pass over it; the table reports each head's best validation epoch.

With --sweep KEY=V1,V2 (repeatable, as `ytune train --sweep`), each task also trains the grid in one
pass, each head's best epoch and the winner chosen on rows held out of training, and the default
head and the probe are selected the same way in a pass of their own: the table then sets the
default head against the swept winner, both scored once on validation. Each finished task is
appended to --results, and a rerun skips the tasks already there with the same settings.

    python benchmarks/bench_glue.py --quick                  # 2,000 training rows per task, 2 epochs
    python benchmarks/bench_glue.py --tasks sst2,stsb,mrpc,cola,rte --epochs 3
    python benchmarks/bench_glue.py --tasks stsb,mrpc,rte,cola --epochs 10 \
        --sweep lr=2e-4,5e-4,1e-3 --sweep width=256,384 --sweep blocks=1,2 --results sweeps.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import environment, glue_subset, markdown_table, write_json

from ytune import ExtractConfig, HeadSpec, TrainConfig, extract, open_cache, sweep, train
from ytune.device import configure_cpu
from ytune.train.config import parse_grid
from ytune.train.metrics import majority_baseline

LAYERS = (-4, -3, -2, -1)
PROBE = HeadSpec("probe", config={"head_type": "probe"}, lr=1e-3)  # the probe at its best rate (RESULTS 5a)


def run_sweep(task: str, a: argparse.Namespace, out: Path) -> dict:
    """The grid against the default head and the probe, all selected on the same held-out rows."""
    data = glue_subset(task, a.rows, a.glue)
    ex = extract(data, ExtractConfig(model=a.model, layers=LAYERS, cache_dir=a.cache_dir, progress=False))
    cfg = TrainConfig(epochs=a.epochs, select_on="holdout")
    start = time.perf_counter()
    winner = sweep(
        ex.path,
        [HeadSpec("ytuning")],
        parse_grid(a.sweep),
        cfg,
        out / task / "sweep",
        resume=True,
    )
    sweep_s = time.perf_counter() - start
    start = time.perf_counter()
    alone = train(ex.path, [HeadSpec("default"), PROBE], cfg, out / task / "default", resume=True)
    report = json.loads((out / task / "sweep" / "sweep.json").read_text())
    metric = report["metric"]
    return {
        "task": task,
        "train_rows": len(data.splits["train"]),
        "metric": metric,
        "epochs": a.epochs,
        "grid": report["grid"],
        "heads": len(report["heads"]),
        "winner": winner["winner"],
        "winner_validation": winner["validation"][metric],
        "winner_selection": winner["selection"][metric],
        # What choosing on validation itself would have reported: the flattering figure.
        "best_validation": max(h["evaluation"] for h in report["heads"]),
        "default_validation": alone["default"][metric],
        "probe_validation": alone["probe"][metric],
        "sweep_s": round(sweep_s, 1),
        "default_and_probe_s": round(time.perf_counter() - start, 1),
    }


def sweep_table(rows: list[dict]) -> str:
    return markdown_table(
        [
            "task",
            "train rows",
            "metric",
            "default head",
            "swept winner",
            "winner",
            "probe",
            "grid s",
            "heads",
        ],
        [
            [
                r["task"],
                r["train_rows"],
                r["metric"],
                f"{r['default_validation']:.4f}",
                f"{r['winner_validation']:.4f}",
                r["winner"],
                f"{r['probe_validation']:.4f}",
                f"{r['sweep_s']:.0f}",
                r["heads"],
            ]
            for r in rows
        ],
    )


def run_task(task: str, a: argparse.Namespace, out: Path) -> dict:
    data = glue_subset(task, a.rows, a.glue)
    ex = extract(data, ExtractConfig(model=a.model, layers=LAYERS, cache_dir=a.cache_dir, progress=False))
    head = json.loads(a.head)
    specs = [HeadSpec("ytuning", config=head, lr=a.lr), HeadSpec("probe", config={"head_type": "probe"})]
    if data.task.kind == "classification":  # the same head, its label queries started at the label names
        specs.insert(1, HeadSpec("ytuning_names", config={**head, "label_init": "names"}, lr=a.lr))
    best = train(ex.path, specs, TrainConfig(epochs=a.epochs), out / task)
    cache = open_cache(ex.path)
    column = cache.labels("train", task)
    row = {
        "task": task,
        "train_rows": len(data.splits["train"]),
        "extract_s": ex.seconds,
        "metric": column.metrics[0],
    }
    for name in [s.name for s in specs]:
        m = json.loads((out / task / name / "metrics.json").read_text())
        row[name] = best[name]
        row[f"{name}_parameters"] = m["tunable_parameters"]
        row[f"{name}_s_per_epoch"] = sum(h["seconds"] for h in m["history"]) / len(m["history"])
    if column.kind == "classification":
        row["majority"] = majority_baseline(
            column.metrics, column.values, cache.labels("validation", task).values
        )
    row["encoder_parameters"] = m["encoder_parameters"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--tasks", default="sst2,stsb,mrpc,cola,rte")
    p.add_argument("--rows", type=int, help="training rows per task (default: all)")
    p.add_argument("--model", help="the encoder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=int, help="(default: ytune's, by the training set's size)")
    p.add_argument("--lr", type=float, default=None, help="Y-Tuning learning rate (default: ytune's)")
    p.add_argument("--head", default="{}", help="Y-Tuning head settings as JSON (default: ytune's defaults)")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "ytune-bench-glue"))
    p.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "ytune-bench-glue-runs"))
    p.add_argument("--quick", action="store_true", help="2,000 training rows per task, 2 epochs")
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2", help="sweep this setting (repeatable)")
    p.add_argument("--results", help="with --sweep: JSON lines, one per finished task (a rerun skips those)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    configure_cpu(1)  # as the `ytune` command sets it
    if a.quick:
        a.rows, a.epochs = a.rows or 2000, a.epochs or 2
    if a.sweep:
        results = Path(a.results or "sweeps.jsonl")
        done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        key = lambda r: (r["task"], r["train_rows"], r["epochs"], json.dumps(r["grid"]))  # noqa: E731
        for task in a.tasks.split(","):
            rows = len(glue_subset(task, a.rows, a.glue).splits["train"])
            if any(key(r) == (task, rows, a.epochs, json.dumps(parse_grid(a.sweep))) for r in done):
                continue
            row = run_sweep(task, a, Path(a.runs))
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
            print(sweep_table([row]), flush=True)
        return print(sweep_table(done))
    rows = [run_task(t, a, Path(a.runs)) for t in a.tasks.split(",")]
    fmt = lambda r, k: f"{r[k][r['metric']]:.4f}" if k in r else "-"  # noqa: E731
    table = [
        [
            r["task"],
            r["train_rows"],
            r["metric"],
            fmt(r, "ytuning"),
            fmt(r, "ytuning_names"),
            fmt(r, "probe"),
            fmt(r, "majority"),
            f"{r['ytuning_parameters']:,} ({100 * r['ytuning_parameters'] / r['encoder_parameters']:.1f}%)",
            f"{r['ytuning_s_per_epoch']:.0f}",
        ]
        for r in rows
    ]
    headers = [
        "task",
        "train rows",
        "metric",
        "Y-Tuning",
        "Y-Tuning, names",
        "probe",
        "majority",
        "Y-Tuning params",
        "s/epoch (both)",
    ]
    print(markdown_table(headers, table))
    write_json(a.out, {"environment": environment(), "epochs": a.epochs, "head": a.head, "rows": rows})


if __name__ == "__main__":
    main()

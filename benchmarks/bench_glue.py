"""Accuracy on the GLUE tasks in ../shared/data with the default encoder: Y-Tuning against the
linear probe and the majority class, with tunable parameters and training seconds per epoch.

Each task is extracted once (cached under --cache-dir, reused on reruns), then a Y-Tuning head and
the probe train in one pass over it; the table reports each head's best validation epoch.

    python benchmarks/bench_glue.py --quick                  # 2,000 training rows per task, 2 epochs
    python benchmarks/bench_glue.py --tasks sst2,stsb,mrpc,cola,rte --epochs 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import environment, glue_subset, markdown_table, write_json

from ytune.cache.reader import open_cache
from ytune.extract.pipeline import ExtractConfig, extract
from ytune.train.metrics import majority_baseline
from ytune.train.trainer import HeadSpec, TrainConfig, train

LAYERS = (-4, -3, -2, -1)


def run_task(task: str, a: argparse.Namespace, out: Path) -> dict:
    data = glue_subset(task, a.rows, a.glue)
    ex = extract(data, ExtractConfig(layers=LAYERS, cache_dir=a.cache_dir, progress=False))
    head = json.loads(a.head)
    specs = [HeadSpec("ytuning", config=head, lr=a.lr), HeadSpec("probe", config={"head_type": "probe"})]
    if data.task.kind == "classification":  # the same head, its label queries started at the label names
        specs.insert(1, HeadSpec("ytuning_names", config={**head, "label_init": "names"}, lr=a.lr))
    best = train(ex.path, specs, TrainConfig(epochs=a.epochs), out / task, log=lambda m: None)
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
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="Y-Tuning learning rate (default: ytune's)")
    p.add_argument("--head", default="{}", help="Y-Tuning head settings as JSON (default: ytune's defaults)")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "ytune-bench-glue"))
    p.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "ytune-bench-glue-runs"))
    p.add_argument("--quick", action="store_true", help="2,000 training rows per task, 2 epochs")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    if a.quick:
        a.rows, a.epochs = a.rows or 2000, 2
    rows = [run_task(t, a, Path(a.runs)) for t in a.tasks.split(",")]
    fmt = lambda r, k: f"{r[k][r['metric']]:.4f}" if k in r else "-"  # noqa: E731
    table = [[r["task"], r["train_rows"], r["metric"], fmt(r, "ytuning"), fmt(r, "ytuning_names"), fmt(r, "probe"), fmt(r, "majority"),
              f"{r['ytuning_parameters']:,} ({100 * r['ytuning_parameters'] / r['encoder_parameters']:.1f}%)",
              f"{r['ytuning_s_per_epoch']:.0f}"] for r in rows]  # fmt: skip
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

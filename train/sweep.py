"""Sweeps: a grid of head settings trained as the heads of one pass, the winner chosen honestly.

`--sweep lr=2e-4,5e-4 --sweep width=256,384` trains the product of the values as heads named after
their settings (`lr=2e-4,width=256`, ...), on top of the base settings the other flags give. By
default each head's best epoch and the winning head are chosen on a seeded slice of the training
rows that no head trains on (stream.holdout_rows); only the winner's score on the evaluation split
is the sweep's result, so a small validation split (RTE: 277 rows) cannot flatter it. Beside the
heads: sweep.json (every head's settings and scores), a table, a plot, and the winner's name, which
`ytune eval` and `ytune predict` follow when given the sweep's folder. Under torchrun the heads are
shared between the ranks, and rank 0 writes the same files (train/ranks.py).

The same parsers read `--head KEY=VALUE,...`, so a setting means the same wherever it is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ytune.errors import UserError
from ytune.train.checkpoint import SWEEP_FILE
from ytune.train.config import HOLDOUT, HeadSpec, TrainConfig, with_settings
from ytune.train.plots import plot_sweep
from ytune.train.ranks import gather, join, run_folder, share
from ytune.train.trainer import train

log = logging.getLogger(__name__)


def expand(base: Sequence[HeadSpec], grid: Mapping[str, Sequence[str]]) -> list[tuple[HeadSpec, dict]]:
    """Every base head with every combination of the grid's values, named after them; with each,
    the grid's settings it has."""
    heads = []
    for spec in base:
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values, strict=True))
            name = ",".join(f"{k}={v}" for k, v in settings.items())
            heads.append(
                (with_settings(spec, settings, name if len(base) == 1 else f"{spec.name},{name}"), settings)
            )
    return heads


def sweep(
    cache_path: str | Path,
    base: Sequence[HeadSpec],
    grid: Mapping[str, Sequence[str]],
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
) -> dict:
    """Train the grid in one pass; returns the winner: name, settings, selection and evaluation metrics.

    Under torchrun (WORLD_SIZE, RANK, LOCAL_RANK set) each rank trains its share of the heads and
    every rank returns the same winner; rank 0 writes the sweep's files (train/ranks.py)."""
    out = Path(out)
    cfg = dataclasses.replace(cfg, select_on=cfg.select_on or HOLDOUT)
    ranks, cfg = join(cfg)
    mine = share(ranks, list(enumerate(expand(base, grid))))
    start = time.perf_counter()
    specs = [spec for _, (spec, _) in mine]
    folder = run_folder(ranks, out, [s.name for s in specs])
    results = train(cache_path, specs, cfg, folder, resume=resume) if specs else {}
    rows = gather(ranks, [_summary(i, spec, settings, out, results) for i, (spec, settings) in mine])
    seconds = time.perf_counter() - start
    rows.sort(key=lambda row: row["index"])
    heads = [row["head"] for row in rows]
    if len({h["metric"] for h in heads}) > 1:
        raise UserError("the swept heads learn labels scored by different metrics: there is no one winner.")
    won = winner_of(rows)
    winner = won["head"]
    report = {
        "winner": winner["name"],
        "selected_on": won["selected_on"],
        "eval_split": cfg.eval_split,
        "metric": winner["metric"],
        "grid": dict(grid),
        "seconds": round(seconds, 2),
        "heads": heads,
    }
    if ranks.rank == 0:
        (out / SWEEP_FILE).write_text(json.dumps(report, indent=1) + "\n")
        log.info(format_table(report))
        plot_sweep(report, out / "sweep.png")
    return {
        "winner": winner["name"],
        "settings": winner["settings"],
        "selected_on": won["selected_on"],
        "selection": won["selection"],
        cfg.eval_split: won["evaluation"],
    }


def winner_of(rows: Sequence[dict]) -> dict:
    """The sweep's winner: of the settings with the best mean selection score over their seeds (one
    seed each unless `seed` is swept, so that one lucky draw does not choose the settings), the
    head with the best score. The first of equals wins: grid order decides ties."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        settings = {k: v for k, v in row["head"]["settings"].items() if k != "seed"}
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(row)
    best = max(groups.values(), key=lambda g: statistics.fmean(r["head"]["selection"] for r in g))
    return max(best, key=lambda row: row["head"]["selection"])


def _summary(index: int, spec: HeadSpec, settings: dict, out: Path, results: dict) -> dict:
    """What the sweep's table needs of one trained head: its row, and its metrics to return should it
    win; small enough to gather from other ranks."""
    m = json.loads((out / spec.name / "metrics.json").read_text())
    metric = next(iter(m["selection"]))
    head = {
        "name": spec.name,
        "settings": settings,
        "metric": metric,
        "selection": m["selection"][metric],
        "evaluation": results[spec.name][metric],
        "best_epoch": m["best_epoch"],
        "parameters": m["tunable_parameters"],
        "seconds": round(sum(h["seconds"] for h in m["history"]), 2),
    }
    return {
        "index": index,
        "head": head,
        "selected_on": m["selected_on"],
        "selection": m["selection"],
        "evaluation": results[spec.name],
    }


def format_table(report: dict) -> str:
    metric, on, split = report["metric"], report["selected_on"], report["eval_split"]
    rows = sorted(report["heads"], key=lambda h: -h["selection"])
    width = max(len(h["name"]) for h in rows)
    lines = [f"{'head':<{width}}  {on + ' ' + metric:>20}  {split + ' ' + metric:>22}  epoch  parameters"]
    for h in rows:
        mark = "  <- winner" if h["name"] == report["winner"] else ""
        lines.append(
            f"{h['name']:<{width}}  {h['selection']:>20.4f}  {h['evaluation']:>22.4f}  "
            f"{h['best_epoch']:>5}  {h['parameters']:>10,}{mark}"
        )
    lines.append(f"{len(rows)} heads in one pass, {report['seconds']:.0f} s; chosen on {on}.")
    return "\n".join(lines)

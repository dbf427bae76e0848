"""Sweeps: a grid of head settings trained as the heads of one pass, the winner chosen honestly.

`--sweep lr=2e-4,5e-4 --sweep width=256,384` trains the product of the values as heads named after
their settings (`lr=2e-4,width=256`, ...), on top of the base settings the other flags give. By
default each head's best epoch and the winning head are chosen on a seeded slice of the training
rows that no head trains on (stream.holdout_rows); only the winner's score on the evaluation split
is the sweep's result, so a small validation split (RTE: 277 rows) cannot flatter it. Beside the
heads: sweep.json (every head's settings and scores), a table, a plot, and the winner's name, which
`ytune eval` and `ytune predict` follow when given the sweep's folder.

The same parsers read `--head KEY=VALUE,...`, so a setting means the same wherever it is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ytune.errors import UserError
from ytune.train.checkpoint import SWEEP_FILE
from ytune.train.config import HOLDOUT, HeadSpec, TrainConfig, with_settings
from ytune.train.plots import plot_sweep
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
    """Train the grid in one pass; returns the winner: name, settings, selection and evaluation metrics."""
    out = Path(out)
    cfg = dataclasses.replace(cfg, select_on=cfg.select_on or HOLDOUT)
    grown = expand(base, grid)
    start = time.perf_counter()
    results = train(cache_path, [spec for spec, _ in grown], cfg, out, resume=resume)
    seconds = time.perf_counter() - start
    heads, summaries = [], {}
    for spec, settings in grown:
        m = summaries[spec.name] = json.loads((out / spec.name / "metrics.json").read_text())
        metric = next(iter(m["selection"]))
        heads.append(
            {
                "name": spec.name,
                "settings": settings,
                "metric": metric,
                "selection": m["selection"][metric],
                "evaluation": results[spec.name][metric],
                "best_epoch": m["best_epoch"],
                "parameters": m["tunable_parameters"],
                "seconds": round(sum(h["seconds"] for h in m["history"]), 2),
            }
        )
    if len({h["metric"] for h in heads}) > 1:
        raise UserError("the swept heads learn labels scored by different metrics: there is no one winner.")
    winner = max(heads, key=lambda h: h["selection"])  # the first of equals: grid order decides ties
    selected_on = summaries[winner["name"]]["selected_on"]
    report = {
        "winner": winner["name"],
        "selected_on": selected_on,
        "eval_split": cfg.eval_split,
        "metric": winner["metric"],
        "grid": dict(grid),
        "seconds": round(seconds, 2),
        "heads": heads,
    }
    (out / SWEEP_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log.info(format_table(report))
    plot_sweep(report, out / "sweep.png")
    return {
        "winner": winner["name"],
        "settings": winner["settings"],
        "selected_on": selected_on,
        "selection": summaries[winner["name"]]["selection"],
        cfg.eval_split: results[winner["name"]],
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

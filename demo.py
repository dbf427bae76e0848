"""`ytune demo`: the whole pipeline on SST-2 with the bundled encoder, end to end in minutes.

Extract (or reuse) a cache of SST-2, train a Y-Tuning head and the linear probe in one pass over
it, and print what a newcomer wants to know: accuracy of each, tunable parameters, time spent
extracting and training, and the cache's size.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ytune import ExtractConfig, HeadSpec, TrainConfig, extract, load_glue, train
from ytune.cache.store import summary

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """What `ytune demo` runs; its flags are read off the fields that carry help."""

    data_dir: str | None = None  # a local GLUE folder; None: $YTUNE_GLUE_DIR, else the hub
    cache_dir: str | None = None  # None: ytune's cache root
    out: str = field(default="runs/demo", metadata={"help": "folder for the heads"})
    train_rows: int = field(default=20000, metadata={"help": "training rows to use, 0 for all"})
    epochs: int = field(default=3, metadata={"help": "passes over the training rows"})


def demo_cache(cfg: DemoConfig):
    """SST-2's first `cfg.train_rows` training rows and its whole validation split, and their
    cache: extracted, or reused when there."""
    data = load_glue("sst2", ["train", "validation"], cfg.data_dir, limit=cfg.train_rows or None)
    data.splits["validation"] = load_glue("sst2", ["validation"], cfg.data_dir).splits["validation"]
    rows = f"{len(data.splits['train'])} training rows, {len(data.splits['validation'])} validation rows"
    log.info(f"extracting SST-2 ({rows})")
    result = extract(data, ExtractConfig(cache_dir=cfg.cache_dir))
    log.info(
        f"cache {result.path}: " + ("reused, nothing extracted" if result.rows == 0 else result.summary())
    )
    return data, result


def demo_heads(cfg: DemoConfig, data, result) -> dict:
    """Train a Y-Tuning head and the linear probe in one pass over the cache `demo_cache` gave;
    returns the table's rows."""
    start = time.perf_counter()
    # The probe at its own best learning rate (measured against the head's): the comparison is fair.
    specs = [HeadSpec("ytuning"), HeadSpec("probe", config={"head_type": "probe"}, lr=1e-3)]
    metrics = train(result.path, specs, TrainConfig(epochs=cfg.epochs), cfg.out)
    seconds = time.perf_counter() - start
    params = {
        s.name: json.loads((Path(cfg.out) / s.name / "metrics.json").read_text())["tunable_parameters"]
        for s in specs
    }
    return {
        "train_rows": len(data.splits["train"]),
        "accuracy": {n: m["accuracy"] for n, m in metrics.items()},
        "parameters": params,
        "extract_seconds": result.seconds,
        "cache_reused": result.rows == 0,
        "train_seconds": seconds,
        "epochs": cfg.epochs,
        "cache": str(result.path),
        "out": str(cfg.out),
        "cache_mb": summary(result.path)["bytes"] / 1e6,
    }


def format_table(r: dict) -> str:
    extract_note = "0 (cache reused)" if r["cache_reused"] else f"{r['extract_seconds']:.0f}"
    lines = [
        f"SST-2 validation (872 rows); trained on the first {r['train_rows']} training rows, {r['epochs']} epochs",
        "",
        "| head | accuracy | tunable parameters |",
        "|---|---|---|",
        *(f"| {n} | {r['accuracy'][n]:.4f} | {r['parameters'][n]:,} |" for n in r["accuracy"]),
        "",
        f"extraction seconds: {extract_note}; training seconds (both heads, one pass): {r['train_seconds']:.0f}",
        f"cache: {r['cache']} ({r['cache_mb']:.0f} MB)",
        f"heads: {r['out']}/ytuning and {r['out']}/probe; try: ytune predict --head {r['out']}/ytuning "
        '"a gripping, funny film"',
    ]
    return "\n".join(lines)

"""Helpers shared by the benchmarks: repeated timing, the machine's description, tables, JSON.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this module is imported as `common`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any], repeats: int = 3, setup: Callable[[], Any] | None = None) -> dict:
    """Run `fn` `repeats` times; the median and every run's seconds, and the last return value.
    `setup`, when given, runs before each run, untimed."""
    seconds, result = [], None
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "runs_s": seconds, "result": result}


def environment() -> dict:
    """What the numbers depend on, recorded next to them."""
    import numpy
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
    }
    for name in ("zarr", "h5py"):
        with contextlib.suppress(ImportError):
            info[name] = __import__(name).__version__
    with contextlib.suppress(OSError, StopIteration):
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return info


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, obj: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def glue_subset(task: str, rows: int | None, glue: str):
    """The first `rows` training rows of a GLUE task (all when None) and its whole validation split:
    the fixed subset every contender of a benchmark sees."""
    from ytune import load_glue

    data = load_glue(task, ["train", "validation"], glue, limit=rows)
    data.splits["validation"] = load_glue(task, ["validation"], glue).splits["validation"]
    return data

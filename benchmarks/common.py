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

# DeBERTa-v2-XXLarge's attention settings: relative attention both ways (p2c, c2p) over log-bucketed
# positions, shared attention keys, layer-normed relative embeddings, the conv after the first
# layer, no absolute positions or token types.
DEBERTA_V2 = dict(
    max_position_embeddings=512,
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    max_relative_positions=-1,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    conv_kernel_size=3,
    conv_act="gelu",
    type_vocab_size=0,
)


def random_deberta(folder: Path, dtype=None, device: str = "cpu", **shape: Any) -> None:
    """A randomly initialised DeBERTa-v2 of `shape` (DebertaV2Config fields over DEBERTA_V2; the
    vocabulary MiniLM's unless given) with seed 0, saved to `folder` in `dtype` with the bundled
    MiniLM tokenizer, whose ids fit any vocabulary at least as large. The DeBERTa-v2 path is tested
    and benchmarked on such models: its weights are not available offline."""
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model
    from transformers.utils import logging

    from ytune.extract.encoder import resolve_model

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    config = DebertaV2Config(**{"vocab_size": len(tokenizer), **DEBERTA_V2, **shape})
    torch.manual_seed(0)
    with torch.device(device):
        model = DebertaV2Model(config)
    (model if dtype is None else model.to(dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


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

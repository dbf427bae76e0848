"""DeBERTa attention on a CPU: transformers' eager path against disentangled-flash's torch backend.

What `--attention auto` does on a CPU rests on this (benchmarks/RESULTS.md 6): the fast path is
used there only if it is faster and as close to float32 transformers.

The encoder: a DeBERTa-v2-base-shaped model with random weights (hidden 768, 12 heads, 12 layers,
intermediate 3072, relative attention p2c|c2p with 256 log buckets, shared keys, the conv after the
first layer; MiniLM's tokenizer and vocabulary), float32, saved once to a temporary folder and loaded
through `load_encoder` twice, `attention="eager"` and `attention="fast"`, each cut after the
deepest default layer (encoder.default_layers(12)) as extraction cuts it. The rows: the first N
SST-2 training rows (--task: another GLUE task's, pairs as pairs), tokenized at max_length 128, sorted by length and cut into the same padded
batches (pipeline.batches, the CPU's token budget), each through `run_encoder` as `extract` runs it
(inference mode, CPU: no autocast).

Timing: an untimed warm-up batch, then `--rounds` passes over the batches, each batch through both
contenders in turn; tokens/s counts real (unpadded) tokens, the median round is reported, and the
ratio is the median of the per-round ratios. Closeness: for every real token and requested layer, the relative
difference |fast - eager| / |eager| of its hidden vector (L2 norms), max and mean; and the largest
absolute difference of one number. One JSON line is appended to benchmarks/results/attention.jsonl.

The gain comes from the position scores transformers computes for every relative bucket: it shrinks
as rows grow towards position_buckets tokens, so `--task rte --max-length 512` (long premises)
measures that end.

usage: taskset -c 1 python benchmarks/bench_attention.py [--rows 512] [--rounds 5] [--threads 1]
                        [--task sst2] [--max-length 128] [--glue DIR] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import environment, random_deberta  # noqa: E402

from ytune import load_glue  # noqa: E402
from ytune.device import batch_tokens  # noqa: E402
from ytune.extract.encoder import Encoder, default_layers, load_encoder, truncate  # noqa: E402
from ytune.extract.pipeline import Tokenized, batches, run_encoder, tokenize  # noqa: E402

CONTENDERS = ("eager", "fast")


def timed_round(encoders: dict[str, Encoder], tok: Tokenized, plan: list[np.ndarray], layers) -> tuple:
    """One pass over the batches, each batch through every contender in turn (paired in time, so
    load from other processes falls on both alike): seconds per contender, and its features (every
    batch's real tokens of the requested layers, [tokens, layers, hidden] each)."""
    seconds = dict.fromkeys(encoders, 0.0)
    features = {mode: [] for mode in encoders}
    for rows in plan:
        for mode, encoder in encoders.items():
            start = time.perf_counter()
            hidden, mask = run_encoder(encoder, tok, rows, layers, "none")
            seconds[mode] += time.perf_counter() - start
            features[mode].append(hidden[mask])
    return seconds, features


def closeness(fast: list[torch.Tensor], eager: list[torch.Tensor]) -> dict:
    diff = torch.cat([(f - e).flatten(0, 1) for f, e in zip(fast, eager, strict=True)])
    ref = torch.cat([e.flatten(0, 1) for e in eager])
    relative = diff.norm(dim=-1) / ref.norm(dim=-1)
    return {
        "max_relative": float(relative.max()),
        "mean_relative": float(relative.mean()),
        "max_abs": float(diff.abs().max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=512, help="the first N training rows")
    p.add_argument("--task", default="sst2", help="the GLUE task whose training rows are encoded")
    p.add_argument("--max-length", type=int, default=128, help="tokens per row, longer rows cut")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--results", type=Path, default=HERE / "results" / "attention.jsonl")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    split = load_glue(a.task, ["train"], a.glue, limit=a.rows).splits["train"]
    with tempfile.TemporaryDirectory() as tmp:
        random_deberta(  # DeBERTa-v2-base's shape
            Path(tmp),
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            position_buckets=256,
        )
        encoders = {mode: load_encoder(tmp, "cpu", "float32", mode) for mode in CONTENDERS}
    layers = default_layers(12)
    for encoder in encoders.values():
        truncate(encoder.model, max(layers))
    tok = tokenize(encoders["eager"].tokenizer, split, a.max_length)
    order = np.argsort(tok.lengths, kind="stable")
    plan = list(batches(order, tok.lengths[order], batch_tokens(torch.device("cpu"))))
    tokens = int(tok.lengths.sum())
    padded = sum(len(rows) * int(tok.lengths[rows].max()) for rows in plan)

    timed_round(encoders, tok, plan[:1], layers)  # warm-up: allocator, the fast path's first plans
    seconds = {mode: [] for mode in CONTENDERS}
    for _ in range(a.rounds):
        spent, features = timed_round(encoders, tok, plan, layers)
        for mode in CONTENDERS:
            seconds[mode].append(spent[mode])
    ratios = [e / f for e, f in zip(seconds["eager"], seconds["fast"], strict=True)]
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "encoder": "random deberta-v2-base shape (768x12, buckets 256, conv), float32",
        "task": a.task,
        "max_length": a.max_length,
        "rows": len(split.texts),
        "real_tokens": tokens,
        "padded_tokens": padded,
        "batches": len(plan),
        "layers": list(layers),
        "threads": a.threads,
        "rounds_s": seconds,
        **{f"{mode}_tokens_s": tokens / statistics.median(seconds[mode]) for mode in CONTENDERS},
        "fast_over_eager": statistics.median(ratios),
        **closeness(features["fast"], features["eager"]),
        "disentangled_flash": _version("disentangled-flash"),
        "transformers": _version("transformers"),
        "environment": environment(),
    }
    a.results.parent.mkdir(parents=True, exist_ok=True)
    with a.results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "environment"}, indent=2))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()

"""Extraction throughput: ytune's `extract` against what a user would write instead, same rows, same run.

Real data (SST-2 from a local GLUE folder) through the bundled default encoder (all-MiniLM-L6-v2,
loaded once, outside timing, torch threads left at their default unless --threads). Three contenders:

- A  ytune: `extract(dataset, ExtractConfig(layers, cache_dir=<a new temporary dir every run>,
     progress=False), encoder=...)`. The time covers tokenization, shard planning, encoding, writing,
     fsync, checksums and the manifest. ytune's own `result.seconds` is reported too.
- B  bare forward loop (the floor for A): the same `tokenize()`, `plan_shards()` and `batches()`, so
     the very same padded batches, through the same truncated model and `forward_layers` under
     `torch.inference_mode`; the features are thrown away. Goal: A >= 0.95 x B's tokens/s.
- C  the naive way: batches of 32 rows in source order, `padding="max_length"` to 128, the full
     model with `output_hidden_states=True` under `torch.no_grad`, the requested layers stacked and
     `torch.save`d per batch (float32 [32, 128, layers, hidden]); no fsync. Goal: A >= 2 x C.

Tokens/s is the same numerator for every contender: the real (unpadded) tokens of the rows, as
`tokenize()` counts them at max_length 128 (C's attention masks are checked to hold the same count).
The contenders run interleaved (A B C A B C ...), after one untimed warm-up round on a few rows, and
the table reports medians; the paired ratios are medians of the per-round ratios, which cancel some
of the load other processes put on the machine. CPU s is the process CPU time of all its threads.
Before every timed run the page cache is synced (untimed), so no contender pays for another's
write-back. Bytes/token: A's shard bytes as recorded in the manifest over tokens (ideal: layers x
hidden x 2 bytes), C's files over the same tokens.

Overhead breakdown: during A's runs, ytune's extraction functions are wrapped (in this process only,
by monkeypatching; no source file changes) with timers: tokenize, opening the cache, planning and
labels (which include one encoder pass over the label names), the encode loop (run_encoder =
padding + forward; to_storage = float16 conversion and the finite check), the final wait for the
writer thread, and inside the writer thread open shard, append (each batch into the open shard)
and commit (fsync, checksum, rename, manifest update). Nested timings are named parent/child.

usage: python benchmarks/bench_extract.py [--glue DIR] [--quick] [--rows N] [--layers=-4,-3,-2,-1]
                                          [--repeats N] [--batch-tokens N] [--backend zarr|hdf5]
                                          [--dir DIR] [--threads N] [--no-sync] [--out results.json]

  default: all 872 rows of SST-2 validation; --quick: its first 300 rows; --rows N: the first N rows
  of SST-2 train instead. --glue: the GLUE folder (default: shared/data/glue beside the checkout). Write --layers with `=`: argparse takes `-4,...` for an option otherwise.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, write_json  # noqa: E402

from ytune import ExtractConfig, extract, load_glue  # noqa: E402
from ytune.cache import files  # noqa: E402
from ytune.cache import writer as writer_mod  # noqa: E402
from ytune.cache.format import DEFAULT_SHARD_BYTES, DTYPES, int8_group, numpy_dtype  # noqa: E402
from ytune.cache.manifest import read_manifest  # noqa: E402
from ytune.cache.writer import CacheWriter, plan_shards  # noqa: E402
from ytune.extract import pipeline  # noqa: E402
from ytune.extract.data import SplitData, TextDataset  # noqa: E402
from ytune.extract.encoder import Encoder, forward_layers, load_encoder, resolve_layers, truncate  # noqa: E402
from ytune.extract.pipeline import batches, pad, tokenize  # noqa: E402

MAX_LENGTH = 128  # ExtractConfig's default, and the naive contender's padding length
NAIVE_BATCH = 32
WARMUP_ROWS = 64
A, B, C = "A ytune extract", "B bare forward loop", "C naive (pad 128, torch.save)"


# --------------------------------------------------------------------------------------------------
# Timers around ytune's own functions (A's overhead breakdown)


class Probe:
    """Accumulated seconds per wrapped call, keyed by the chain of wrapped callers in its thread
    ("encode_shards/run_encoder"), so the writer thread's work is kept apart from the main thread's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed_call(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(name)
            key = "/".join(stack)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                stack.pop()
                with self._lock:
                    self.seconds[key] += elapsed
                    self.calls[key] += 1

        return timed_call

    @contextmanager
    def installed(self) -> Iterator[Probe]:
        targets = [
            (pipeline, "tokenize", "tokenize"),
            (CacheWriter, "__init__", "open cache"),
            (pipeline, "_plan", "plan + labels"),
            (pipeline, "_encode_shards", "encode_shards"),
            (pipeline, "run_encoder", "run_encoder"),
            (pipeline, "to_storage", "to_storage"),
            (pipeline._WriterThread, "close", "wait for writer"),
            (CacheWriter, "open_shard", "open shard"),
            (writer_mod.ShardWriting, "append", "append"),
            (writer_mod.ShardWriting, "commit", "commit"),
            (CacheWriter, "close", "close cache"),
            (files, "fsync_tree", "fsync files"),
            (writer_mod, "checksum", "checksum"),
            (writer_mod, "size_on_disk", "size_on_disk"),
            (files, "fsync_dir", "fsync_dir"),
            (writer_mod, "update_manifest", "update_manifest"),
            (writer_mod, "write_manifest", "write_manifest"),
        ]
        saved = []
        try:
            for owner, attr, name in targets:
                original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
                saved.append((owner, attr, original))
                setattr(owner, attr, self.wrap(name, original))
            yield self
        finally:
            for owner, attr, original in reversed(saved):
                setattr(owner, attr, original)


# --------------------------------------------------------------------------------------------------
# The contenders


def run_ytune(dataset: TextDataset, encoder: Encoder, layers: tuple[int, ...], args, cache_dir: Path) -> dict:
    cfg = ExtractConfig(
        layers=layers,
        cache_dir=cache_dir,
        progress=False,
        batch_tokens=args.batch_tokens,
        backend=args.backend,
        dtype=args.dtype,
    )
    result = extract(dataset, cfg, encoder=encoder)
    return {"tokens": result.tokens, "rows": result.rows, "seconds": result.seconds, "path": result.path}


def run_bare(
    split: SplitData, encoder: Encoder, layers: tuple[int, ...], batch_tokens: int, dtype: str
) -> dict:
    """The same padded batches as ytune's (planned for `dtype`), through the same truncated model;
    nothing kept."""
    start = time.perf_counter()
    tok = tokenize(encoder.tokenizer, split, MAX_LENGTH)
    tokenized = time.perf_counter()
    bytes_per_token = numpy_dtype(dtype).itemsize * len(layers) * encoder.hidden_size
    plan = plan_shards(tok.lengths, bytes_per_token, DEFAULT_SHARD_BYTES)
    pad_id = encoder.tokenizer.pad_token_id or 0
    tokens = nbatches = 0
    with torch.inference_mode():
        for shard in plan:
            for rows in batches(shard.rows, shard.lengths, batch_tokens):
                inputs, mask = pad(tok, rows, pad_id, torch.device("cpu"))
                hidden = forward_layers(encoder.model, inputs, layers)
                tokens += int(mask.sum())
                nbatches += 1
                del hidden
    end = time.perf_counter()
    return {
        "tokens": tokens,
        "batches": nbatches,
        "parts": {"tokenize": tokenized - start, "plan + pad + forward": end - tokenized},
    }


def run_naive(
    split: SplitData, model: torch.nn.Module, tokenizer, layers: tuple[int, ...], out: Path
) -> dict:
    """What a user writes first: fixed batches, padded to max length, every hidden state, float32 files."""
    out.mkdir(parents=True)
    tokens = 0
    with torch.no_grad():
        for i, start in enumerate(range(0, len(split.texts), NAIVE_BATCH)):
            texts = [split.texts[start : start + NAIVE_BATCH]]
            if split.pairs is not None:
                texts.append(split.pairs[start : start + NAIVE_BATCH])
            batch = tokenizer(
                *texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            output = model(**batch, output_hidden_states=True)
            features = torch.stack([output.hidden_states[layer] for layer in layers], dim=2)
            torch.save(features, out / f"batch-{i:05d}.pt")
            tokens += int(batch["attention_mask"].sum())
    return {"tokens": tokens}


# --------------------------------------------------------------------------------------------------
# Measuring


def load_data(args) -> tuple[TextDataset, str]:
    if args.rows is not None:
        return load_glue("sst2", ["train"], args.glue, limit=args.rows), "train"
    limit = 300 if args.quick else None
    return load_glue("sst2", ["validation"], args.glue, limit=limit), "validation"


def head(dataset: TextDataset, split: str, n: int) -> TextDataset:
    """The first n rows of `split`, as a dataset of its own (another name: another cache)."""
    s = dataset.splits[split]
    part = SplitData(
        s.texts[:n],
        s.pairs[:n] if s.pairs is not None else None,
        s.labels[:n] if s.labels is not None else None,
    )
    return TextDataset(f"{dataset.name}[warmup:{n}]", dataset.task, {split: part})


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(args) -> dict:
    dataset, split_name = load_data(args)
    split = dataset.splits[split_name]
    encoder = load_encoder(None, "cpu")
    layers = resolve_layers(args.layer_list, encoder.num_layers)
    full_model = copy.deepcopy(encoder.model)  # C runs the whole model; A and B the truncated one
    truncate(encoder.model, max(layers))  # what extract() does first (idempotent), for B from the start
    batch_tokens = args.batch_tokens or ExtractConfig().batch_tokens or 4096  # extract's CPU default
    root = Path(tempfile.mkdtemp(prefix="ytune-bench-extract-", dir=args.dir))
    probe = Probe()
    runs: dict[str, list[dict]] = {A: [], B: [], C: []}
    counter = iter(range(1_000_000))

    def once(name: str, data: TextDataset, timed: bool) -> dict:
        s = data.splits[split_name]
        where = root / f"{name[0]}-{next(counter)}"
        if not args.no_sync:
            os.sync()
        probe.reset()
        cpu = time.process_time()
        start = time.perf_counter()
        if name == A:
            with probe.installed():
                got = run_ytune(data, encoder, layers, args, where)
        elif name == B:
            got = run_bare(s, encoder, layers, batch_tokens, args.dtype)
        else:
            got = run_naive(s, full_model, encoder.tokenizer, layers, where)
        got["wall_s"] = time.perf_counter() - start
        got["cpu_s"] = time.process_time() - cpu  # every thread of this process: less sensitive to load
        if name == A:
            manifest = read_manifest(got.pop("path"))
            got["shard_bytes"] = sum(
                shard.bytes for rec in manifest.splits.values() for shard in rec.shards.values()
            )
            got["breakdown"] = dict(probe.seconds)
            got["calls"] = dict(probe.calls)
        elif name == C:
            got["file_bytes"] = dir_bytes(where)
        shutil.rmtree(where, ignore_errors=True)  # untimed; before the next contender runs
        if timed:
            print(f"  {name}: {got['wall_s']:.2f} s", file=sys.stderr, flush=True)
        return got

    try:
        warm = head(dataset, split_name, min(WARMUP_ROWS, len(split)))
        print(f"warm-up on {len(warm.splits[split_name])} rows", file=sys.stderr, flush=True)
        for name in runs:
            once(name, warm, timed=False)
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
            for name in runs:
                runs[name].append(once(name, dataset, timed=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    tokens = runs[A][0]["tokens"]
    for name, rs in runs.items():
        for got in rs:
            assert got["tokens"] == tokens, f"{name} saw {got['tokens']} real tokens, A {tokens}"
    return {
        "dataset": dataset.name,
        "split": split_name,
        "rows": len(split),
        "tokens": tokens,
        "padded_tokens_naive": sum(
            min(NAIVE_BATCH, len(split) - i) * MAX_LENGTH for i in range(0, len(split), NAIVE_BATCH)
        ),
        "layers": list(layers),
        "hidden": encoder.hidden_size,
        "batch_tokens": batch_tokens,
        "backend": args.backend,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "temp_root": str(Path(args.dir or tempfile.gettempdir()).resolve()),
        "runs": runs,
    }


WRITER_STEPS = ("open shard", "append", "commit")  # in the writer thread, overlapping encode_shards
STEPS = ("tokenize", "open cache", "plan + labels", "encode_shards", "close cache", *WRITER_STEPS)


def _step_order(key: str) -> tuple:
    """Top-level steps in the order extract() runs them (the writer thread's last), children after."""
    top = key.split("/")[0]
    return (STEPS.index(top) if top in STEPS else len(STEPS), key)


def summarize(m: dict) -> dict:
    tokens, runs = m["tokens"], m["runs"]
    med = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    a_own = statistics.median(r["seconds"] for r in runs[A])
    paired_ab = statistics.median(b["wall_s"] / a["wall_s"] for a, b in zip(runs[A], runs[B], strict=True))
    paired_ac = statistics.median(c["wall_s"] / a["wall_s"] for a, c in zip(runs[A], runs[C], strict=True))
    # an int8 cache stores a float16 scale per group of channels beside the features
    scales = 2 * m["hidden"] // int8_group(m["hidden"]) if m["dtype"] == "int8" else 0
    ideal = len(m["layers"]) * (m["hidden"] * numpy_dtype(m["dtype"]).itemsize + scales)
    a_bytes = statistics.median(r["shard_bytes"] for r in runs[A]) / tokens
    c_bytes = statistics.median(r["file_bytes"] for r in runs[C]) / tokens
    keys = sorted({k for r in runs[A] for k in r["breakdown"]}, key=_step_order)
    breakdown = {k: statistics.median(r["breakdown"].get(k, 0.0) for r in runs[A]) for k in keys}
    calls = {k: runs[A][-1]["calls"].get(k, 0) for k in keys}
    b_parts = {k: statistics.median(r["parts"][k] for r in runs[B]) for k in runs[B][0]["parts"]}
    return {
        "median_s": med,
        "median_cpu_s": cpu,
        "cpu_ratio_vs_b": {name: cpu[B] / c for name, c in cpu.items()},
        "tokens_per_s": {name: tokens / s for name, s in med.items()},
        "a_result_seconds": a_own,
        "ratio_vs_b": {name: med[B] / s for name, s in med.items()},
        "paired_a_over_b": paired_ab,
        "paired_a_over_c": paired_ac,
        "bytes_per_token": {A: a_bytes, C: c_bytes, "ideal": ideal},
        "breakdown_a": breakdown,
        "breakdown_calls": calls,
        "breakdown_b": b_parts,
        "goal_a_vs_b_0.95": paired_ab >= 0.95,
        "goal_a_vs_c_2x": paired_ac >= 2.0,
    }


def report(m: dict, s: dict) -> str:
    tokens = m["tokens"]
    med, tps, ratio, bpt = s["median_s"], s["tokens_per_s"], s["ratio_vs_b"], s["bytes_per_token"]
    cpu, cpu_ratio = s["median_cpu_s"], s["cpu_ratio_vs_b"]
    rows = [
        [
            A,
            f"{med[A]:.3f}",
            f"{tps[A]:.0f}",
            f"{ratio[A]:.3f}",
            f"{bpt[A]:.1f} (ideal {bpt['ideal']})",
            f"{cpu[A]:.2f}",
            f"{cpu_ratio[A]:.3f}",
        ],
        [
            "A (its own result.seconds)",
            f"{s['a_result_seconds']:.3f}",
            f"{tokens / s['a_result_seconds']:.0f}",
            f"{med[B] / s['a_result_seconds']:.3f}",
            "",
            "",
            "",
        ],
        [B, f"{med[B]:.3f}", f"{tps[B]:.0f}", "1.000", "- (nothing kept)", f"{cpu[B]:.2f}", "1.000"],
        [
            C,
            f"{med[C]:.3f}",
            f"{tps[C]:.0f}",
            f"{ratio[C]:.3f}",
            f"{bpt[C]:.1f}",
            f"{cpu[C]:.2f}",
            f"{cpu_ratio[C]:.3f}",
        ],
    ]
    out = [
        f"## Extraction: {m['dataset']} {m['split']}, {m['rows']} rows, {tokens} real tokens "
        f"(C pads to {m['padded_tokens_naive']}), layers {m['layers']}, hidden {m['hidden']}, "
        f"batch_tokens {m['batch_tokens']}, {m['backend']}, {m['dtype']}, torch threads {m['torch_threads']}, "
        f"temp dir under {m['temp_root']}, {len(m['runs'][A])} interleaved rounds",
        "",
        markdown_table(
            ["contender", "median s", "tokens/s", "ratio vs B", "bytes/token", "CPU s", "CPU ratio vs B"],
            rows,
        ),
        "",
        f"- A vs B, median of paired per-round ratios: {s['paired_a_over_b']:.3f} "
        f"(goal >= 0.95: {'met' if s['goal_a_vs_b_0.95'] else 'NOT met'})",
        f"- A vs C, median of paired per-round speed-ups: {s['paired_a_over_c']:.2f}x "
        f"(goal >= 2x: {'met' if s['goal_a_vs_c_2x'] else 'NOT met'})",
        "- CPU s: process CPU time of all its threads (less sensitive to other load than wall time); "
        "ratio vs B = B's median over the row's median, so > 1 is faster than B",
        "- per-round seconds: "
        + "; ".join(
            f"{name[0]} " + ", ".join(f"{r['wall_s']:.2f}" for r in rs) for name, rs in m["runs"].items()
        ),
        "",
        "### Where A's time goes (median seconds over A's runs; writer-thread work: open shard, append, commit)",
        "",
    ]
    return "\n".join(out + breakdown_report(s, med[A], med[B]))


def breakdown_report(s: dict, med_a: float, med_b: float) -> list[str]:
    """The table of A's time by step, and what A spends beyond the encoder's forward pass."""
    bd, calls = s["breakdown_a"], s["breakdown_calls"]
    top = sum(v for k, v in bd.items() if "/" not in k and k not in WRITER_STEPS)
    lines = [[k, f"{v:.3f}", calls[k], f"{100 * v / med_a:.1f}%"] for k, v in bd.items()]
    lines.append(["(rest of extract(): identity, loop set-up, ...)", f"{med_a - top:.3f}", "", ""])
    out = [markdown_table(["step", "seconds", "calls", "share of A"], lines)]
    forward = bd.get("encode_shards/run_encoder", 0.0)
    outside = med_a - forward
    parts = {
        "writer tail (wait for writer)": bd.get("encode_shards/wait for writer", 0.0),
        "to_storage": bd.get("encode_shards/to_storage", 0.0),
        "plan + labels": bd.get("plan + labels", 0.0),
        "tokenize": bd.get("tokenize", 0.0),
        "open cache": bd.get("open cache", 0.0),
    }
    parts["other"] = outside - sum(parts.values())
    out += [
        "",
        f"- A outside the dataset's encoder forward (median A minus median run_encoder): {outside:.3f} s "
        f"= {100 * outside / med_a:.1f}% of A: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()),
        "- B for comparison: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in s["breakdown_b"].items())
        + f"; A's run_encoder (padding + forward) {forward:.3f} s; A minus B: {med_a - med_b:+.3f} s",
        "- A at B's forward speed, with its own extra work: ratio "
        f"{med_b / (s['breakdown_b'].get('plan + pad + forward', 0.0) + outside):.3f}",
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    parser.add_argument("--quick", action="store_true", help="the first 300 rows of SST-2 validation")
    parser.add_argument("--rows", type=int, help="the first N rows of SST-2 train instead of validation")
    parser.add_argument("--layers", default="-4,-3,-2,-1", help="hidden-state indices, e.g. --layers=-4,-1")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--batch-tokens", type=int, help="A's and B's token budget (default: extract's)")
    parser.add_argument("--backend", default="zarr", choices=("zarr", "hdf5"))
    parser.add_argument("--dtype", default="float16", choices=DTYPES, help="A's storage dtype")
    parser.add_argument("--dir", help="where the temporary caches and files go (default: the temp dir)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--no-sync", action="store_true", help="do not sync before every timed run")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.layer_list = [int(x) for x in args.layers.split(",") if x.strip()]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    m = measure(args)
    s = summarize(m)
    print(report(m, s))
    write_json(args.out, {"environment": environment(), "args": vars(args), "measured": m, "summary": s})


if __name__ == "__main__":
    main()

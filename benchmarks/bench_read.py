"""Read throughput of the training stream against a plain sequential read of the same shard files.

Builds a synthetic cache with the writer API (hidden 384, 2 layers, float16, sentence-like lengths
of 8-64 tokens, the default shard size) in both backends, then measures, per backend:

- plain read: every file of every shard read with open().read(), in manifest order (the baseline);
- split.stream() in-process, without and with its prefetch thread;
- reader.StreamDataset through torch DataLoader(batch_size=None, num_workers=0 and 2).

The stream runs shuffle=True, the default shuffle buffer, batch_size 32, one label column. MB/s is
the split's feature bytes (real tokens, no padding) over the median wall time of --repeats runs
(3 in quick mode, else 5; the modes run round-robin so outside load falls on all alike), so every
row reads the same amount and the ratio column is baseline time / stream time. By default the
page cache is warm: nothing is dropped, every file is read once before timing. --cold evicts the
cache's files from the page cache (posix_fadvise DONTNEED) before every run instead. --threads
sets torch's intra-op threads of the main process (DataLoader workers always use 1).

usage: python benchmarks/bench_read.py [--quick] [--out results.json] [--dir DIR] [--threads N]
                                       [--repeats N] [--cold] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, timed, write_json  # noqa: E402

from ytune import open_cache  # noqa: E402
from ytune.cache.format import (
    DEFAULT_SHARD_BYTES,
    encode,  # noqa: E402
)
from ytune.cache.identity import Identity  # noqa: E402
from ytune.cache.writer import CacheWriter  # noqa: E402

HIDDEN, LAYERS, DTYPE = 384, (6, 12), "float16"
MIN_LEN, MAX_LEN = 8, 64
BATCH = 32
BACKENDS = ("zarr", "hdf5")
LABEL = "label"


def identity() -> Identity:
    return Identity(
        "bench-encoder", "bench-tokenizer", 128, "longest_first", LAYERS, DTYPE, "bench/synthetic"
    )


def bytes_per_token() -> int:
    return len(LAYERS) * HIDDEN * np.dtype(np.float16).itemsize


def build(root: Path, backend: str, target_bytes: int, seed: int = 0) -> Path:
    """A complete synthetic cache of about `target_bytes` of features; reused when already there."""
    rng = np.random.default_rng(seed)
    rows = int(target_bytes / bytes_per_token() / ((MIN_LEN + MAX_LEN) / 2))
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=rows)
    info = {"hidden_size": HIDDEN, "encoder": "synthetic"}
    with CacheWriter(root, identity(), backend, info=info) as w:
        texts = [f"synthetic row {i}" for i in range(rows)]
        plan = w.plan_split(
            "train", lengths, f"synthetic-{seed}-{rows}", shard_bytes=DEFAULT_SHARD_BYTES, texts=(texts, None)
        )
        done = w.committed("train")
        for shard in plan:
            if shard.name in done:
                continue
            g = torch.Generator().manual_seed(seed * 100_003 + shard.index)
            block = torch.randn(shard.tokens, len(LAYERS), HIDDEN, generator=g)
            w.write_shard("train", shard, encode(block, DTYPE, LAYERS))
        if LABEL not in w.manifest().splits["train"].labels:
            w.set_labels(
                "train", LABEL, (lengths % 2).tolist(), "classification", ["even", "odd"], ["accuracy"]
            )
        return w.path


def shard_files(cache: Path) -> list[Path]:
    """Every file of every shard of the train split, in manifest order (sorted shard names)."""
    reader = open_cache(cache).split("train")
    out = []
    for name in reader.shards:
        path = reader.shard_path(name)
        out += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return out


def plain_read(files: list[Path]) -> dict:
    total = 0
    for file in files:
        with open(file, "rb") as f:
            total += len(f.read())
    return {"file_bytes": total}


def evict(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def consume(batches) -> dict:
    """What a training loop sees: count rows, real and padded tokens."""
    rows = tokens = padded = 0
    for batch in batches:
        rows += len(batch.rows)
        tokens += int(batch.mask.sum())
        padded += batch.mask.numel()
    return {"rows": rows, "tokens": tokens, "padded_tokens": padded}


def modes(cache: Path) -> dict[str, Callable[[int], dict]]:
    split = open_cache(cache).split("train")
    dataset = split.dataset(batch_size=BATCH, labels=[LABEL], shuffle=True)

    def stream(prefetch: int) -> Callable[[int], dict]:
        return lambda epoch: consume(
            split.stream(BATCH, labels=[LABEL], shuffle=True, epoch=epoch, prefetch=prefetch)
        )

    def loader(workers: int) -> Callable[[int], dict]:
        def run(epoch: int) -> dict:
            dataset.set_epoch(epoch)
            return consume(DataLoader(dataset, batch_size=None, num_workers=workers))

        return run

    return {
        "split.stream(prefetch=0)": stream(0),
        "split.stream(prefetch=2)": stream(2),
        "DataLoader, 0 workers": loader(0),
        "DataLoader, 2 workers": loader(2),
    }


def measure(cache: Path, backend: str, repeats: int, cold: bool) -> list[dict]:
    """Every mode `repeats` times, round-robin (baseline, stream modes, baseline, ...), so load from
    other processes on the machine falls on all of them alike; the median of each."""
    reader = open_cache(cache).split("train")
    feature_bytes = reader.record.tokens * bytes_per_token()
    files = shard_files(cache)
    plain_read(files)  # warm the page cache (and the file system's metadata) before any timing
    epochs = itertools.count()  # a new shuffle order every run, as in training
    runs: dict[str, Callable[[], dict]] = {"plain read (baseline)": lambda: plain_read(files)}
    for name, fn in modes(cache).items():
        runs[name] = lambda fn=fn: fn(next(epochs))
    for fn in runs.values():  # one untimed pass each: imports, worker start-up code paths, allocator
        fn()
    timings = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            timings[name].append(timed(fn, 1, (lambda: evict(files)) if cold else None))
    results = []
    for name, ts in timings.items():
        seconds = [t["median_s"] for t in ts]
        got = ts[-1]["result"]
        if "rows" in got:
            assert got["rows"] == len(reader) and got["tokens"] == reader.record.tokens, (name, got)
        results.append(
            {
                "backend": backend,
                "mode": name,
                "median_s": statistics.median(seconds),
                "runs_s": seconds,
                "result": got,
            }
        )
    base = results[0]["median_s"]
    for r in results:
        r["feature_bytes"] = feature_bytes
        r["mb_per_s"] = feature_bytes / 1e6 / r["median_s"]
        r["ratio"] = base / r["median_s"]
    return results


def profile(cache: Path, backend: str, top: int = 14) -> str:
    """cProfile of one in-process pass without prefetch: the work each DataLoader worker does."""
    split = open_cache(cache).split("train")
    consume(split.stream(BATCH, labels=[LABEL], shuffle=True, prefetch=0))  # warm
    prof = cProfile.Profile()
    prof.enable()
    consume(split.stream(BATCH, labels=[LABEL], shuffle=True, epoch=1, prefetch=0))
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return f"### profile: {backend}, split.stream(prefetch=0), sorted by tottime\n\n```\n{out.getvalue()}```"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 60 MB of features instead of about 300 MB")
    p.add_argument(
        "--repeats", type=int, help="runs per measurement, median reported (default 3, full mode 5)"
    )
    p.add_argument(
        "--threads", type=int, help="torch.set_num_threads for the main process (default: torch's own choice)"
    )
    p.add_argument("--dir", help="where to build (and reuse) the caches; default a temporary folder")
    p.add_argument("--out", help="also write the results as JSON to this path")
    p.add_argument(
        "--cold", action="store_true", help="evict the shard files from the page cache before each run"
    )
    p.add_argument("--profile", action="store_true", help="also print a cProfile of the stream per backend")
    args = p.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    target = (60 if args.quick else 300) * 10**6
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="ytune-bench-read-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        results, caches, profiles = [], {}, []
        for backend in BACKENDS:
            start = time.perf_counter()
            caches[backend] = build(root / backend, backend, target)
            built_s = time.perf_counter() - start
            record = open_cache(caches[backend]).split("train").record
            split_info = {"rows": record.rows, "tokens": record.tokens, "shards": record.num_shards}
            print(
                f"{backend}: {record.rows} rows, {record.tokens} tokens, "
                f"{record.tokens * bytes_per_token() / 1e6:.1f} MB of features in {record.num_shards} shards "
                f"({built_s:.1f} s to build or reuse)",
                file=sys.stderr,
            )
            results += measure(caches[backend], backend, args.repeats, args.cold)
            if args.profile:
                profiles.append(profile(caches[backend], backend))

    load = (load_before[0], os.getloadavg()[0])
    padded = next(r for r in results if r["mode"] == "split.stream(prefetch=0)")["result"]
    first = results[0]
    page_cache = (
        "cold: shard files evicted with posix_fadvise(DONTNEED) before every run"
        if args.cold
        else "warm: nothing dropped, every shard file read once before timing"
    )
    print(
        "\n".join(
            [
                f"\nRead throughput, {'quick' if args.quick else 'full'} mode",
                f"- data: {first['feature_bytes'] / 1e6:.1f} MB of float16 features, {split_info['rows']} rows, "
                f"{split_info['shards']} shard(s) of at most {DEFAULT_SHARD_BYTES >> 20} MiB (the default), "
                f"hidden {HIDDEN}, {len(LAYERS)} layers, lengths {MIN_LEN}-{MAX_LEN} tokens",
                f"- stream: batch {BATCH}, shuffle=True, default buffer, one label column; batches carry "
                f"{padded['padded_tokens'] / padded['tokens'] - 1:.0%} padding tokens (not counted in MB/s)",
                f"- page cache {page_cache}",
                f"- median of {args.repeats} runs, modes round-robin; {os.cpu_count()} CPUs, torch threads "
                f"{torch.get_num_threads()} in the main process (1 in DataLoader workers); 1-min load "
                f"average {load[0]:.1f} before, {load[1]:.1f} after",
                *(
                    [
                        f"- {split_info['shards']} shard(s): DataLoader workers beyond that have nothing to read"
                    ]
                    if split_info["shards"] < 2
                    else []
                ),
                "",
            ]
        )
    )
    rows = [
        (
            r["backend"],
            r["mode"],
            f"{r['median_s']:.3f}",
            f"{r['mb_per_s']:.0f}",
            f"{r['ratio']:.2f}",
            " ".join(f"{s:.3f}" for s in r["runs_s"]),
        )
        for r in results
    ]
    print(markdown_table(["backend", "mode", "median s", "MB/s", "vs plain read", "runs (s)"], rows))
    for text in profiles:
        print("\n" + text)
    write_json(
        args.out,
        {
            "benchmark": "bench_read",
            "mode": "quick" if args.quick else "full",
            "page_cache": page_cache,
            "load_average": {"before": load[0], "after": load[1]},
            "split": split_info,
            "config": {
                "hidden": HIDDEN,
                "layers": list(LAYERS),
                "dtype": DTYPE,
                "lengths": [MIN_LEN, MAX_LEN],
                "batch_size": BATCH,
                "shard_bytes": DEFAULT_SHARD_BYTES,
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
            },
            "environment": environment(),
            "results": [{k: v for k, v in r.items() if k != "result"} | r["result"] for r in results],
        },
    )


if __name__ == "__main__":
    main()

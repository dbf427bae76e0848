"""Read throughput of the training stream against a plain sequential read of the same shard files.

Builds a synthetic cache with the writer API (hidden 384, 2 layers, float16, sentence-like lengths
of 8-64 tokens, the default shard size) in both backends, then measures, per backend:

- plain read: every file of every shard read with open().read(), in manifest order (the baseline);
- split.stream() in-process, without and with its prefetch thread;
- reader.StreamDataset through torch DataLoader(batch_size=None, num_workers=0 and 2).

The stream runs shuffle=True, the default shuffle buffer, batch_size 32, one label column. MB/s is
the split's feature bytes (real tokens, no padding) over the median wall time of --repeats runs,
so every row reads the same amount and the ratio column is baseline time / stream time. By default
the page cache is warm: nothing is dropped, every file is read once before timing. --cold evicts
the cache's files from the page cache (posix_fadvise DONTNEED) before every run instead.

usage: python benchmarks/bench_read.py [--quick] [--out results.json] [--dir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
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

from ytune.cache.format import encode  # noqa: E402
from ytune.cache.identity import Identity  # noqa: E402
from ytune.cache.reader import open_cache  # noqa: E402
from ytune.cache.writer import DEFAULT_SHARD_BYTES, CacheWriter  # noqa: E402

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
        plan = w.plan_split("train", lengths, f"synthetic-{seed}-{rows}", shard_bytes=DEFAULT_SHARD_BYTES)
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
    reader = open_cache(cache).split("train")
    feature_bytes = reader.record.tokens * bytes_per_token()
    files = shard_files(cache)
    plain_read(files)  # warm the page cache (and the file system's metadata) before any timing
    setup = (lambda: evict(files)) if cold else None
    epochs = itertools.count()  # a new shuffle order every run, as in training

    results = []
    base = timed(lambda: plain_read(files), repeats, setup)
    results.append({"backend": backend, "mode": "plain read (baseline)", **base})
    for name, fn in modes(cache).items():
        r = timed(lambda fn=fn: fn(next(epochs)), repeats, setup)
        got = r["result"]
        assert got["rows"] == len(reader) and got["tokens"] == reader.record.tokens, (name, got)
        results.append({"backend": backend, "mode": name, **r})
    for r in results:
        r["feature_bytes"] = feature_bytes
        r["mb_per_s"] = feature_bytes / 1e6 / r["median_s"]
        r["ratio"] = base["median_s"] / r["median_s"]
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
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--dir", help="where to build (and reuse) the caches; default a temporary folder")
    p.add_argument("--out", help="also write the results as JSON to this path")
    p.add_argument(
        "--cold", action="store_true", help="evict the shard files from the page cache before each run"
    )
    p.add_argument("--profile", action="store_true", help="also print a cProfile of the stream per backend")
    args = p.parse_args()
    target = (60 if args.quick else 300) * 10**6

    with tempfile.TemporaryDirectory(prefix="ytune-bench-read-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        results, caches, profiles = [], {}, []
        for backend in BACKENDS:
            start = time.perf_counter()
            caches[backend] = build(root / backend, backend, target)
            built_s = time.perf_counter() - start
            record = open_cache(caches[backend]).split("train").record
            print(
                f"{backend}: {record.rows} rows, {record.tokens} tokens, "
                f"{record.tokens * bytes_per_token() / 1e6:.1f} MB of features in {record.num_shards} shards "
                f"({built_s:.1f} s to build or reuse)",
                file=sys.stderr,
            )
            results += measure(caches[backend], backend, args.repeats, args.cold)
            if args.profile:
                profiles.append(profile(caches[backend], backend))

    padded = next(r for r in results if r["mode"] == "split.stream(prefetch=0)")["result"]
    first = results[0]
    page_cache = (
        "cold: shard files evicted with posix_fadvise(DONTNEED) before every run"
        if args.cold
        else "warm: nothing dropped, every shard file read once before timing"
    )
    print(
        f"\nRead throughput, {'quick' if args.quick else 'full'} mode: "
        f"{first['feature_bytes'] / 1e6:.1f} MB of float16 features, hidden {HIDDEN}, {len(LAYERS)} layers, "
        f"lengths {MIN_LEN}-{MAX_LEN}, default shard size ({DEFAULT_SHARD_BYTES >> 20} MiB), "
        f"batch {BATCH}, shuffle=True, default buffer; page cache {page_cache}; "
        f"median of {args.repeats}; {os.cpu_count()} CPUs. Padding in batches: "
        f"{padded['padded_tokens'] / padded['tokens'] - 1:.0%} extra tokens.\n"
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
            "config": {
                "hidden": HIDDEN,
                "layers": list(LAYERS),
                "dtype": DTYPE,
                "lengths": [MIN_LEN, MAX_LEN],
                "batch_size": BATCH,
                "shard_bytes": DEFAULT_SHARD_BYTES,
                "repeats": args.repeats,
            },
            "environment": environment(),
            "results": [{k: v for k, v in r.items() if k != "result"} | r["result"] for r in results],
        },
    )


if __name__ == "__main__":
    main()

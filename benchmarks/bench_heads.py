"""K heads in one pass against one head: training seconds per epoch, from the same cache.

The read, shuffle, padding and transfer of every batch is paid once whatever K (measured alone: the
K = 0 row); what grows with K is each head's own forward, backward and optimizer step. Reported as
the ratio to K = 1 (the issue's goal: 8 heads in at most 2.5x the time of one), beside the floor
that sharing the read alone allows: (read + K x one head's compute) / one-head epoch.

    python benchmarks/bench_heads.py --quick                 # builds a 4,000-row SST-2 cache first
    python benchmarks/bench_heads.py --cache PATH --ks 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import environment, markdown_table, write_json

from ytune.cache.reader import open_cache
from ytune.extract.data import load_glue
from ytune.extract.pipeline import ExtractConfig, extract
from ytune.train.trainer import HeadSpec, TrainConfig, batches, default_label, train


def build_cache(rows: int, glue: str, root: str) -> Path:
    data = load_glue("sst2", ["train", "validation"], glue, limit=rows)
    return extract(data, ExtractConfig(layers=(-4, -3, -2, -1), cache_dir=root, progress=False)).path


def read_seconds(path: Path) -> float:
    """One epoch of the stream alone (read, shuffle, pad, collate): what one pass shares among heads."""
    cfg, cache = TrainConfig(), open_cache(path)
    layers = list(range(len(cache.identity.layers)))
    labels = [default_label(cache, cfg.train_split)]
    start = time.perf_counter()
    for _ in batches(cache.split(cfg.train_split), cfg, labels, layers, shuffle=True):
        pass
    return time.perf_counter() - start


def epoch_seconds(cache: Path, k: int, head_type: str, out: str) -> float:
    specs = [HeadSpec(f"h{i}", config={"head_type": head_type}, lr=1e-3 * (1 + i / 16)) for i in range(k)]
    train(cache, specs, TrainConfig(epochs=1), out, log=lambda m: None)
    return json.loads((Path(out) / "h0" / "metrics.json").read_text())["history"][0]["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", help="an existing cache with a train and a validation split")
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--rows", type=int, default=4000, help="training rows of the cache built without --cache")
    p.add_argument("--ks", default="1,4,8,16")
    p.add_argument("--head-type", default="ytuning")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1,4,8 heads, 2 repeats, 2,000 rows")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    ks = [1, 4, 8] if a.quick else [int(k) for k in a.ks.split(",")]
    repeats = 2 if a.quick else a.repeats
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(a.cache) if a.cache else build_cache(2000 if a.quick else a.rows, a.glue, tmp + "/cache")
        runs: dict[int, list[float]] = {k: [] for k in ks}
        reads: list[float] = []
        for r in range(repeats):  # interleaved, so a slow moment of a shared machine hits every K alike
            reads.append(read_seconds(cache))
            for k in ks:
                runs[k].append(epoch_seconds(cache, k, a.head_type, f"{tmp}/run-{k}-{r}"))
    base, read = statistics.median(runs[ks[0]]), statistics.median(reads)
    head = base - read  # one head's own forward, backward and optimizer step per epoch
    rows = [["0 (the stream alone)", f"{read:.2f}", f"{read / base:.2f}x", "-", "-"]]
    rows += [
        [k, f"{statistics.median(runs[k]):.2f}", f"{statistics.median(runs[k]) / base:.2f}x",
         f"{(read + k * head) / base:.2f}x", f"{k}x"]
        for k in ks
    ]  # fmt: skip
    print(
        markdown_table(
            [
                "heads in one pass",
                "median s/epoch",
                "vs 1 head",
                "floor: shared read + K heads' compute",
                "K separate runs",
            ],
            rows,
        )
    )
    print(
        f"\nthe stream alone is {100 * read / base:.1f}% of a one-head epoch; the rest is the head's own compute"
    )
    write_json(
        a.out,
        {
            "environment": environment(),
            "cache": str(cache),
            "head_type": a.head_type,
            "runs": runs,
            "read": reads,
        },
    )


if __name__ == "__main__":
    main()

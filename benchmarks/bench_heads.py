"""K heads in one pass against one head: training seconds per epoch, from the same cache.

The read, shuffle, padding, transfer and cast of every batch is paid once whatever K (measured
alone: the K = 0 row); heads of one shape run as one stack (parameters with a head axis, batched
products, one optimizer per stack), so what grows with K is the heads' own arithmetic and their
weight-sized gradient and optimizer traffic. Reported as the ratio to K = 1, with each run's peak
RSS. Every measurement runs in a process of its own (allocator settings are per process), the K
values interleaved round by round so a slow moment of a shared machine hits them alike.

`--baseline SRC` also times `--baseline-ks` heads (default: one) with another checkout of ytune
(e.g. a git worktree of the last release) in the same rounds: "one head no slower than before" is
then a ratio of one run.

    python benchmarks/bench_heads.py --quick                 # builds a 2,000-row SST-2 cache first
    python benchmarks/bench_heads.py --cache PATH --ks 1,8,16,64 --baseline ../old
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, markdown_table, write_json

HERE = Path(__file__).resolve().parent


def build_cache(rows: int, glue: str, root: str, dtype: str) -> Path:
    from ytune import ExtractConfig, extract, load_glue

    data = load_glue("sst2", ["train", "validation"], glue, limit=rows)
    cfg = ExtractConfig(layers=(-4, -3, -2, -1), dtype=dtype, cache_dir=root, progress=False)
    return extract(data, cfg).path


def child(cache: str, k: int, out: str) -> None:
    """One measurement, in this process: K default heads (learning rates apart) for one epoch; K = 0
    is the stream alone. Prints {"seconds", "rss_mb"}."""
    from ytune import HeadSpec, TrainConfig, open_cache, train
    from ytune.device import configure_cpu
    from ytune.train.build import default_label
    from ytune.train.stream import batches

    configure_cpu(1)  # as the `ytune` command sets it

    cfg = TrainConfig(epochs=1)
    if k == 0:
        c = open_cache(cache)
        start = time.perf_counter()
        for _ in batches(
            c.split("train"),
            cfg,
            [default_label(c, "train")],
            list(range(len(c.identity.layers))),
            shuffle=True,
        ):
            pass
        seconds = time.perf_counter() - start
    else:
        specs = [HeadSpec(f"h{i}", lr=1e-3 * (1 + i / 16)) for i in range(k)]
        train(cache, specs, cfg, out)
        seconds = json.loads((Path(out) / "h0" / "metrics.json").read_text())["history"][0]["seconds"]
    print(
        json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    )


def measure(cache: Path, k: int, out: str, source: Path | None = None) -> dict:
    """`child` in a fresh process; with `source`, importing ytune from that checkout instead."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if source is not None:  # a folder whose `ytune` is the other checkout, first on the path
        shim = Path(out).parent / "baseline-path"
        shim.mkdir(parents=True, exist_ok=True)
        if not (shim / "ytune").exists():
            (shim / "ytune").symlink_to(source.resolve())
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = subprocess.run(
        [
            sys.executable,
            str(HERE / "bench_heads.py"),
            "--child",
            str(k),
            "--cache",
            str(cache),
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(out).parent,
    )
    if run.returncode:
        sys.exit(f"measurement K={k} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", help="an existing cache with a train and a validation split")
    p.add_argument("--glue", default=str(HERE.parents[1] / "shared/data/glue"))
    p.add_argument("--rows", type=int, default=2000, help="training rows of the cache built without --cache")
    p.add_argument("--dtype", default="float16", help="storage dtype of the cache built without --cache")
    p.add_argument("--ks", default="1,8,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another ytune checkout to time heads with, side by side")
    p.add_argument("--baseline-ks", default="1", help="the K values to time the baseline at (default: 1)")
    p.add_argument("--quick", action="store_true", help="K = 1 and 8, 2 repeats")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        return child(a.cache, a.child, a.out)
    ks = [1, 8] if a.quick else [int(k) for k in a.ks.split(",")]
    repeats = 2 if a.quick else a.repeats
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(a.cache) if a.cache else build_cache(a.rows, a.glue, tmp + "/cache", a.dtype)
        contenders = [("0", 0, None), *[(str(k), k, None) for k in ks]]
        if a.baseline:
            contenders += [(f"{k}, baseline", int(k), a.baseline) for k in a.baseline_ks.split(",")]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
        for r in range(repeats):
            for name, k, source in contenders:
                runs[name].append(measure(cache, k, f"{tmp}/run-{name}-{r}".replace(", ", "-"), source))
                print(f"round {r}: K={name}: {runs[name][-1]}", file=sys.stderr)
    med = {name: statistics.median(x["seconds"] for x in v) for name, v in runs.items()}
    rss = {name: max(x["rss_mb"] for x in v) for name, v in runs.items()}
    base = med["1"]
    rows = [["0 (the stream alone)", f"{med['0']:.2f}", f"{med['0'] / base:.2f}x", f"{rss['0']:.0f}"]]
    rows += [
        [name, f"{med[name]:.2f}", f"{med[name] / base:.2f}x", f"{rss[name]:.0f}"]
        for name in runs
        if name != "0"
    ]
    print(markdown_table(["heads in one pass", "median s/epoch", "vs 1 head", "peak RSS MB"], rows))
    write_json(a.out, {"environment": environment(), "cache": str(cache), "runs": runs})


if __name__ == "__main__":
    main()

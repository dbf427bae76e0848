"""Training from a cache in an object store against the same cache on local disk.

Starts moto's S3 server (a separate process, on 127.0.0.1), uploads a cache there, then trains the
default head for two epochs on it twice, in alternating order over --repeats rounds: from the
local folder, and from the store through a fresh local shard cache. Reported: each epoch's
training seconds (ytune's metrics.json: reading, fetching and the head's compute) and the ratios
store / disk of the first epoch (every shard downloaded and checked) and the second (read from
the local shard cache).

    python benchmarks/bench_store.py --cache ~/.cache/ytune/de34a19ffcd9fa9b --out results/store.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, write_json

from ytune import HeadSpec, TrainConfig, train
from ytune.cache import store
from ytune.cache.remote import set_storage_options
from ytune.device import configure_cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def epochs(cache: str, out: Path, threads: int) -> list[float]:
    train(
        cache,
        [HeadSpec("ytuning")],
        TrainConfig(epochs=2, progress=False),
        out,
    )
    history = json.loads((out / "ytuning" / "metrics.json").read_text())["history"]
    return [h["seconds"] for h in history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="a local cache folder")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    configure_cpu(a.threads)  # as the `ytune` command sets it
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        endpoint = f"http://127.0.0.1:{port}"
        set_storage_options({"endpoint_url": endpoint})
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
        start = time.perf_counter()
        url = store.publish(Path(a.cache), "s3://bench/caches")
        upload_s = time.perf_counter() - start
        runs: dict[str, list[list[float]]] = {"disk": [], "store": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.repeats):
                for where in ("disk", "store") if r % 2 == 0 else ("store", "disk"):
                    os.environ["YTUNE_SHARD_CACHE"] = str(
                        Path(tmp) / f"mirrors-{r}"
                    )  # fresh: epoch 1 downloads
                    source = a.cache if where == "disk" else url
                    runs[where].append(epochs(source, Path(tmp) / f"{where}-{r}", a.threads))
                    print(where, r, [round(s, 2) for s in runs[where][-1]], flush=True)
                shutil.rmtree(Path(tmp) / f"mirrors-{r}", ignore_errors=True)
    finally:
        server.terminate()
    median = {w: [statistics.median(run[e] for run in runs[w]) for e in (0, 1)] for w in runs}
    result = {
        "environment": environment(),
        "cache": a.cache,
        "bytes": store.summary(Path(a.cache))["bytes"],
        "upload_s": upload_s,
        "threads": a.threads,
        "runs": runs,
        "median_s": median,
        "first_epoch_ratio": median["store"][0] / median["disk"][0],
        "second_epoch_ratio": median["store"][1] / median["disk"][1],
    }
    print(
        f"upload {upload_s:.1f} s for {result['bytes'] / 1e6:.0f} MB; epoch 1 store/disk "
        f"{result['first_epoch_ratio']:.2f}x, epoch 2 {result['second_epoch_ratio']:.2f}x"
    )
    write_json(a.out, result)


if __name__ == "__main__":
    main()

"""A cache-writing job for the tests, run as a subprocess so it can be killed for real.

usage: cache_job.py ROOT BACKEND DTYPE [--die-at SHARD --die-when {before,mid,after-rename}]
Features are a pure function of the row, so every run writes the same bytes.
"""

import argparse
import os
import signal

import numpy as np
import torch

from ytune.cache import backends, writer
from ytune.cache.format import encode, from_storage, to_storage
from ytune.cache.identity import Identity

LAYERS, HIDDEN, ROWS = (0, 3, 6), 24, 300


def lengths() -> np.ndarray:
    return np.random.default_rng(7).integers(1, 40, size=ROWS)


def features(row: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(row)
    return torch.randn(length, len(LAYERS), HIDDEN, generator=g) * 3


def stored(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """What a reader returns for features `x` written in `dtype` (its rounding included)."""
    return from_storage(*to_storage(x, dtype, LAYERS), dtype)


def identity(dtype: str) -> Identity:
    return Identity("enc-fp", "tok-fp", 64, "longest_first", LAYERS, dtype, "toy")


def run(
    root: str, backend: str, dtype: str, die_at: int = -1, die_when: str = "before", shard_bytes: int = 12_000
) -> str:
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with writer.CacheWriter(root, identity(dtype), backend, info={"hidden_size": HIDDEN}) as w:
        texts = [f"toy row {i}" for i in range(len(lengths()))]
        plan = w.plan_split("train", lengths(), "text-fp", shard_bytes=shard_bytes, texts=(texts, None))
        done = w.committed("train")
        for shard in plan:
            if shard.name in done:
                continue
            if shard.index == die_at and die_when == "before":
                die()
            if shard.index == die_at and die_when == "mid":

                def half_then_die(sink: backends.ShardSink, block: np.ndarray, *scales: np.ndarray) -> None:
                    sink.features[: len(block) // 2] = block[: len(block) // 2]  # half of its features
                    die()

                backends.ShardSink.append = half_then_die
            if shard.index == die_at and die_when == "after-rename":
                writer.update_manifest = lambda *a: die()
            block = torch.cat(
                [features(int(r), int(n)) for r, n in zip(shard.rows, shard.lengths, strict=True)]
            )
            w.write_shard("train", shard, *encode(block, dtype, LAYERS))
        w.set_labels(
            "train",
            "parity",
            [int(n % 2) for n in lengths()],
            "classification",
            ["even", "odd"],
            ["accuracy"],
        )
        return str(w.path)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("backend")
    p.add_argument("dtype")
    p.add_argument("--die-at", type=int, default=-1)
    p.add_argument("--die-when", default="before")
    a = p.parse_args()
    print(run(a.root, a.backend, a.dtype, a.die_at, a.die_when))

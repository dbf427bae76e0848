"""The training stream: which rows a run learns from and which it selects on, how many passes it
makes over them, and the batches that carry them to the heads.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ytune.cache.reader import Batch, SplitReader
from ytune.cache.resident import ResidentSplit
from ytune.device import pick_device
from ytune.errors import UserError
from ytune.train.config import TrainConfig

log = logging.getLogger(__name__)
EXAMPLES = 60_000  # what a default run shows the heads, epochs permitting (default_epochs)


def default_epochs(rows: int) -> int:
    """Epochs for a training set of `rows`: enough passes to show the heads about EXAMPLES examples,
    3 to 10. Small splits need the passes and large ones peak early (measured with the default head
    on STS-B and SST-2 in benchmarks/RESULTS.md 5a)."""
    return min(10, max(3, math.ceil(EXAMPLES / max(rows, 1))))


def holdout_rows(rows: int, seed: int, share: float = 0.1, least: int = 300) -> np.ndarray:
    """The training rows held out to select on: a seeded draw of `share` of them, at least `least`
    where the split has five times that (so small splits keep 80% to learn from). The same rows for
    every head of a run and for any rerun with the same seed."""
    n = min(max(round(share * rows), least), rows // 5)
    if n < 1:
        raise UserError(
            f"a training split of {rows} rows is too small to hold rows out; select on validation."
        )
    return np.sort(np.random.default_rng([seed, 0x5E1EC7]).choice(rows, n, replace=False))


def batches(
    reader: SplitReader,
    cfg: TrainConfig,
    labels: Sequence[str],
    layers: Sequence[int],
    *,
    shuffle: bool,
    epoch: int = 0,
    keep: np.ndarray | None = None,
) -> Iterator[Batch]:
    """The split's batches (only the rows `keep` marks, if given): from a resident copy where
    `cfg.features` places one (the same batches, gathered on the device), else streamed through a
    DataLoader with `cfg.workers` worker processes (0: read ahead by a thread of this one),
    page-locked on CUDA so their copies to the GPU overlap compute (an int8 cache's still 8-bit:
    the consumer widens them). The stream orders itself from `cfg.seed`; the loader gets a
    generator of its own, because each of its iterators draws a seed from it, which from torch's
    global generator would shift the heads' dropout with every epoch and evaluation."""
    resident = resident_split(reader, layers, cfg)
    if resident is not None:
        columns = {c: reader.cache.labels(reader.name, c) for c in labels}
        args = {"seed": cfg.seed, "epoch": epoch, "buffer_size": cfg.buffer_size, "keep": keep}
        return resident.batches(cfg.batch_size, columns, shuffle=shuffle, **args)
    pin = pick_device(cfg.device).type == "cuda"
    dataset = reader.dataset(
        cfg.batch_size,
        labels=list(labels),
        layers=list(layers),
        shuffle=shuffle,
        seed=cfg.seed,
        epoch=epoch,
        buffer_size=cfg.buffer_size,
        keep=keep,
        pin=pin,
        narrow=pin,  # 8-bit batches cross to the GPU as stored; widened there (Batch.widened)
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=pin and cfg.workers > 0,
        generator=torch.Generator(),
    )
    return iter(loader)


def gpu_room(device: torch.device) -> int:
    """Bytes this process may still take on the GPU: the device's free memory, or less where a
    per-process cap (torch.cuda.set_per_process_memory_fraction) says so."""
    free, total = torch.cuda.mem_get_info(device)
    capped = torch.cuda.get_per_process_memory_fraction(device) * total - torch.cuda.memory_reserved(device)
    return int(min(free, capped))


_RESIDENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # reader -> {layers: ResidentSplit}


def resident_split(reader: SplitReader, layers: Sequence[int], cfg: TrainConfig) -> ResidentSplit | None:
    """The split's resident copy where `cfg.features` places one (made at the first call, kept as
    long as the reader), or None to stream it. auto: onto the GPU if it takes at most half its free
    memory, else the stream. Host memory only when asked: on a CPU it trained no faster than the
    stream (RESULTS.md 3), and the stream's memory does not grow with the split."""
    copies = _RESIDENT.setdefault(reader, {})
    key = tuple(layers)
    if key in copies:
        return copies[key]
    device = pick_device(cfg.device)
    need = ResidentSplit.nbytes(reader, layers)
    where = cfg.features
    if where == "gpu" and device.type != "cuda":
        raise UserError("--features gpu needs a CUDA device; use host or stream.")
    if where == "auto":
        where = "gpu" if device.type == "cuda" and need <= gpu_room(device) / 2 else "stream"
    said = {"gpu": "loaded onto the GPU", "host": "loaded into host memory", "stream": "streamed"}[where]
    log.info("features of split %s: %s (%.2f GB)", reader.name, said, need / 1e9)
    place = device if where == "gpu" else torch.device("cpu")
    copies[key] = None if where == "stream" else ResidentSplit(reader, layers, place)
    return copies[key]

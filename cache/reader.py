"""Reading a cache: random access to one example, and the shuffled, padded batch stream that
`train/` learns from.

The stream reads one whole shard at a time (large sequential reads are what disks and object
stores do fast), shuffles at two levels (shard order per epoch, then a bounded buffer of
examples), pads each batch only to its own longest example, and can prefetch in a background
thread. Memory is bounded by the buffer plus one shard, whatever the size of the cache.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ytune.cache.backends import ShardArrays, get_backend
from ytune.cache.files import is_whole, remove
from ytune.cache.format import TEXTS, decode, from_storage, widen
from ytune.cache.identity import Identity, resolve_index
from ytune.cache.manifest import Manifest, SplitRecord, read_manifest
from ytune.cache.remote import AHEAD, Fetcher, is_url, mirror
from ytune.errors import UserError

BUCKET = 16  # batches per length-sorted pool in a shuffled stream


# One example as stored: features [tokens, layers, hidden], scales [tokens, layers, groups] (int8 caches,
# else None), and its row in the split's source order.
Stored = tuple[np.ndarray, np.ndarray | None, int]


@dataclass
class Example:
    features: torch.Tensor  # [tokens, layers, hidden], the cache's dtype (an int8 cache's: float16)
    row: int  # the example's row in its split's source order


@dataclass
class Batch:
    features: torch.Tensor  # [B, T, layers, hidden], zero-padded; int8 while `scales` is set
    mask: torch.Tensor  # [B, T] bool, True on real tokens
    labels: dict[str, torch.Tensor]  # column -> [B]: int64 classes (-1 unknown), float32 targets (nan)
    rows: torch.Tensor  # [B] int64
    scales: torch.Tensor | None = None  # [B, T, layers, groups] float16, while an int8 batch is not widened

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def widened(self) -> Batch:
        """float16 features where the batch is: an 8-bit batch is widened after its copy to the GPU,
        which so moves half the bytes."""
        if self.scales is None:
            return self
        return Batch(widen(self.features, self.scales), self.mask, self.labels, self.rows)

    def pin_memory(self) -> Batch:
        """In page-locked memory, so that `to(cuda, non_blocking=True)` overlaps the copy with
        compute; the DataLoader calls it in its pinning thread, the stream in its prefetch thread."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, f) -> Batch:
        labels = {k: f(v) for k, v in self.labels.items()}
        scales = None if self.scales is None else f(self.scales)
        return Batch(f(self.features), f(self.mask), labels, f(self.rows), scales)


@dataclass
class LabelColumn:
    name: str
    kind: str  # "classification" | "regression"
    names: list[str] | None
    metrics: list[str]
    values: np.ndarray  # per source row: int64 class (-1 unknown) or float64 target (nan unknown)
    vectors: np.ndarray | None = None  # [labels, cached layers, hidden]: features of the label names


class Cache:
    """A cache opened for reading. `identity`, when given, must match: features of another encoder,
    tokenizer, length, layer set or dataset are never mixed in silently."""

    def __init__(self, path: str | Path, identity: Identity | None = None) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self.backend = get_backend(self.manifest.backend)
        self.fetcher = Fetcher.of(self.path)  # a mirror of a cache in an object store, or None
        if identity is not None and identity != self.manifest.identity:
            differs = ", ".join(self.manifest.identity.diff(identity))
            raise UserError(
                f"cache {self.path} does not match the expected identity (differs in: {differs})."
            )

    @property
    def identity(self) -> Identity:
        return self.manifest.identity

    @property
    def splits(self) -> list[str]:
        return list(self.manifest.splits)

    def split(self, name: str) -> SplitReader:
        return SplitReader(self, name)

    def labels(self, split: str, column: str) -> LabelColumn:
        record = self._record(split)
        if column not in record.labels:
            have = ", ".join(record.labels) or "none"
            raise UserError(
                f"split {split!r} of cache {self.path} has no label column {column!r} (it has: {have})."
            )
        meta = record.labels[column]
        file = self.path / split / "labels" / f"{column}.json"
        try:
            doc = json.loads(file.read_text())
            doc["values"]  # noqa: B018 (present, or the file is damaged)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"label file {split}/labels/{file.name} of cache {self.path} is missing or damaged "
                f"({type(e).__name__}); attach the labels again or run ytune cache verify."
            ) from None
        if meta.kind == "classification":
            values = np.array([-1 if v is None else v for v in doc["values"]], dtype=np.int64)
        else:
            values = np.array([np.nan if v is None else v for v in doc["values"]], dtype=np.float64)
        vectors = np.asarray(doc["vectors"], dtype=np.float32) if "vectors" in doc else None
        return LabelColumn(column, meta.kind, meta.names, meta.metrics, values, vectors)

    def texts(self, split: str) -> tuple[list[str], list[str] | None]:
        """The split's texts and second texts (None for a task of single texts) in row order."""
        self._record(split)  # a split the cache does not hold is one sentence
        file = self.path / split / TEXTS
        try:
            doc = json.loads(file.read_text())
            return doc["texts"], doc["pairs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{split}/{TEXTS} of cache {self.path} is missing or damaged ({type(e).__name__}); "
                "run ytune cache verify."
            ) from None

    def _record(self, split: str) -> SplitRecord:
        try:
            return self.manifest.splits[split]
        except KeyError:
            have = ", ".join(self.manifest.splits) or "none"
            raise UserError(f"cache {self.path} has no split {split!r} (it has: {have}).") from None


def open_cache(path: str | Path, identity: Identity | None = None) -> Cache:
    """The cache at a local path, or at an fsspec URL (read through its local mirror)."""
    return Cache(mirror(str(path)) if is_url(path) else path, identity)


class SplitReader:
    """One split of a cache. Only committed shards are visible; an incomplete split is an error,
    because training on part of a split without saying so would be a silent mistake."""

    def __init__(self, cache: Cache, name: str) -> None:
        self.cache, self.name = cache, name
        self.record = cache._record(name)
        if not self.record.complete:
            raise UserError(
                f"split {name!r} of cache {cache.path} is incomplete ({len(self.record.shards)} of "
                f"{self.record.num_shards} shards); run the same ytune extract command again to finish it."
            )
        self.shards = sorted(self.record.shards)
        self.num_layers = len(cache.identity.layers)
        self._open: dict[str, ShardArrays] = {}
        self._where: np.ndarray | None = None  # row -> (shard position, index in shard)

    def __len__(self) -> int:
        return self.record.rows

    def layer_positions(self, layers: Sequence[int] | None) -> list[int] | None:
        """Positions into the cached layers (negative ones count from the end), checked."""
        if layers is None:
            return None
        out = [resolve_index(i, self.num_layers) for i in layers]
        if None in out:
            i = layers[out.index(None)]
            raise UserError(f"layer position {i} is out of range: the cache holds {self.num_layers} layers.")
        return out

    def shard_path(self, name: str) -> Path:
        return self.cache.path / self.name / (name + self.cache.backend.suffix)

    def _arrays(self, name: str) -> ShardArrays:
        if name not in self._open:
            path = self.shard_path(name)
            if self.cache.fetcher is not None:  # from the store, pinned on local disk while open
                record = self.record.shards[name]
                self.cache.fetcher.local(self.name, path.name, record.bytes, record.checksum)
            try:
                if not is_whole(path, self.record.shards[name].bytes):
                    raise UserError(
                        f"shard {self.name}/{path.name} of cache {self.cache.path} is missing or damaged; "
                        "run ytune cache verify, then ytune extract again to rebuild it."
                    )
                try:
                    self._open[name] = self.cache.backend.open(path)
                except Exception as e:  # zarr and h5py raise many types for a damaged file
                    raise UserError(
                        f"shard {self.name}/{path.name} of cache {self.cache.path} cannot be read ({e}); "
                        "run ytune cache verify."
                    ) from None
            except UserError:
                if self.cache.fetcher is not None:
                    self.cache.fetcher.release(path)
                raise
        return self._open[name]

    def read_shard(
        self, name: str, layers: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """A whole shard as stored (float16, uint16 bfloat16 bits, or int8): features [tokens,
        layers, hidden], an int8 cache's scales [tokens, layers, groups] (else None), offsets [rows + 1],
        source rows [rows]."""

        def read(a: ShardArrays) -> tuple:
            scales = None if a.scales is None else np.asarray(a.scales[...])
            return np.asarray(a.features[...]), scales, np.asarray(a.offsets[...]), np.asarray(a.row[...])

        features, scales, offsets, rows = self._read(name, read)
        positions = self.layer_positions(layers)
        if positions is not None and positions != list(range(self.num_layers)):
            features = features[:, positions]
            scales = None if scales is None else scales[:, positions]
        return features, scales, offsets, rows

    def _damaged(self, name: str, e: Exception) -> UserError:
        """The one sentence for a shard whose data cannot be read back as written: named, with the
        mend. A mirror's copy is deleted here, so the next read fetches the store's afresh."""
        path = self.shard_path(name)
        self._close(name)
        url = self.cache.fetcher.url if self.cache.fetcher is not None else None
        if url is not None:
            remove(path)
            return UserError(
                f"shard {self.name}/{path.name} of cache {url} is damaged in its local copy ({e}); "
                f"the copy was deleted: run the command again to fetch it afresh, and ytune cache verify "
                f"{url} if it fails again."
            )
        return UserError(
            f"shard {self.name}/{path.name} of cache {self.cache.path} is damaged ({e}); run "
            f"ytune cache verify --drop {self.cache.path}, then rerun the extraction to rebuild it."
        )

    def _close(self, name: str) -> None:
        """Let go of a shard read whole: its file handles, and its pin in the local shard cache."""
        arrays = self._open.pop(name, None)
        if arrays is not None and arrays.handle is not None:
            arrays.handle.close()
        if arrays is not None and self.cache.fetcher is not None:
            self.cache.fetcher.release(self.shard_path(name))

    def _prefetch(self, shards: Sequence[str]) -> None:
        if self.cache.fetcher is not None:
            records = [
                (self.shard_path(n).name, self.record.shards[n].bytes, self.record.shards[n].checksum)
                for n in shards
            ]
            self.cache.fetcher.prefetch(self.name, records)

    def __getitem__(self, row: int) -> Example:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is out of range for split {self.name!r} of {len(self)} rows")
        if self._where is None:
            where = np.empty((len(self), 2), dtype=np.int64)
            for s, name in enumerate(self.shards):
                rows = self._read(name, lambda arrays: np.asarray(arrays.row[...]))
                where[rows, 0], where[rows, 1] = s, np.arange(len(rows))
            self._where = where
        s, i = self._where[row]

        def example(arrays: ShardArrays) -> torch.Tensor:
            start, end = (int(x) for x in arrays.offsets[i : i + 2])
            features = torch.from_numpy(np.ascontiguousarray(arrays.features[start:end]))
            scales = None if arrays.scales is None else torch.from_numpy(np.asarray(arrays.scales[start:end]))
            return from_storage(features, scales, self.cache.identity.dtype)

        return Example(self._read(self.shards[s], example), row)

    def _read(self, name: str, read: Callable[[ShardArrays], Any]) -> Any:
        """`read` of the open shard `name`; a damaged chunk is one sentence (`_damaged`)."""
        arrays = self._arrays(name)
        try:
            return read(arrays)
        except Exception as e:  # a chunk's checksum, or any other failure of zarr or h5py
            raise self._damaged(name, e) from None

    def stream(
        self,
        batch_size: int = 32,
        *,
        labels: Sequence[str] = (),
        layers: Sequence[int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        buffer_size: int = 1024,
        prefetch: int = 2,
        worker: tuple[int, int] = (0, 1),
        keep: np.ndarray | None = None,
        pin: bool = False,
        narrow: bool = False,
    ) -> Iterator[Batch]:
        """Batches of one epoch. `worker=(i, n)` takes every n-th shard of the epoch's order, so n
        readers together yield every example exactly once. `keep` (bool per source row) limits the
        epoch to the rows it marks, e.g. the training rows apart from a held-out slice. `narrow`
        leaves an int8 cache's batches 8-bit, for `Batch.widened` after their copy to a GPU."""
        columns = {c: self.cache.labels(self.name, c) for c in labels}
        dtype = self.cache.identity.dtype

        def load(name: str) -> tuple[np.ndarray, Callable[[int], Stored]]:
            features, scales, offsets, rows = self.read_shard(name, layers)
            self._close(name)

            def take(i: int) -> Stored:
                span = slice(offsets[i], offsets[i + 1])
                return features[span], None if scales is None else scales[span], int(rows[i])

            return rows, take

        groups = self.epoch_order(load, batch_size, shuffle, seed, epoch, buffer_size, worker, keep)
        batches = (collate(group, columns, dtype) for group in groups)
        batches = batches if narrow else (b.widened() for b in batches)
        batches = (b.pin_memory() for b in batches) if pin else batches  # for CUDA: see Batch.pin_memory
        return prefetched(batches, prefetch) if prefetch > 0 else batches

    def epoch_order(
        self,
        load: Callable[[str], tuple[np.ndarray, Callable[[int], tuple]]],
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: int,
        buffer_size: int,
        worker: tuple[int, int] = (0, 1),
        keep: np.ndarray | None = None,
    ) -> Iterator[list[tuple]]:
        """The examples of one epoch, batch by batch, in the order the stream trains on them.

        `load(shard)` gives the shard's source rows and `take(i)`, its i-th example as a tuple
        whose first item has the example's length: the stream takes stored features, a
        resident split (cache/resident.py) spans of its packed tokens, so both see one order.
        Shuffled, the shard order is drawn per epoch, the examples of each shard are permuted and
        pass through a bounded buffer, and pools of BUCKET batches are sorted by length, cut and
        their batches shuffled: batches stay random but hold rows of similar length, so padding
        nearly vanishes (measured in RESULTS.md 2). Unshuffled shards are length-sorted already."""
        rng = np.random.default_rng([seed, epoch, worker[0]]) if shuffle else None
        order = (
            list(np.random.default_rng([seed, epoch]).permutation(self.shards)) if shuffle else self.shards
        )
        examples = self._examples(order[worker[0] :: worker[1]], load, rng, buffer_size, keep)
        pool_size = batch_size * (BUCKET if rng is not None else 1)
        while pool := list(itertools.islice(examples, pool_size)):
            if rng is not None:
                pool.sort(key=lambda e: len(e[0]))
            cuts = range(0, len(pool), batch_size)
            for start in rng.permutation(cuts) if rng is not None else cuts:
                yield pool[start : start + batch_size]

    def _examples(
        self,
        shards: Sequence[str],
        load: Callable[[str], tuple[np.ndarray, Callable[[int], tuple]]],
        rng: np.random.Generator | None,
        buffer_size: int,
        keep: np.ndarray | None = None,
    ) -> Iterator[tuple]:
        """The examples of the rows `keep` marks (all by default), shuffled through the buffer when
        rng is given."""
        buffer: list[tuple] = []
        for i, name in enumerate(shards):
            self._prefetch(shards[i + 1 : i + 1 + AHEAD])
            rows, take = load(name)
            order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
            for i in order if keep is None else order[keep[rows[order]]]:
                example = take(i)
                if rng is None or buffer_size <= 1:
                    yield example
                    continue
                # Owned, so the buffer does not pin whole shards: memory stays one shard + buffer.
                example = tuple(x.copy() if isinstance(x, np.ndarray) else x for x in example)
                if len(buffer) < buffer_size:
                    buffer.append(example)
                else:
                    j = int(rng.integers(len(buffer)))
                    yield buffer[j]
                    buffer[j] = example
        if rng is not None:
            for j in rng.permutation(len(buffer)):
                yield buffer[j]

    def dataset(self, batch_size: int = 32, **stream_args) -> StreamDataset:
        return StreamDataset(self, batch_size, **stream_args)


def collate(examples: Sequence[Stored], columns: dict[str, LabelColumn], dtype: str) -> Batch:
    """Pad stored examples to the longest one, still in the stored dtype (an int8 batch comes with
    its scales); labels gathered by source row.

    Padding is done in numpy on the stored bits and decoded once at the end: for these many small
    float16 blocks numpy's slice copies are much faster than torch's (measured in RESULTS.md 2).
    """
    longest = max(len(f) for f, _, _ in examples)
    first, first_scales, _ = examples[0]
    features = np.zeros((len(examples), longest, *first.shape[1:]), dtype=first.dtype)
    scales = None
    if first_scales is not None:
        scales = np.zeros((*features.shape[:3], first_scales.shape[-1]), dtype=first_scales.dtype)
    mask = np.zeros((len(examples), longest), dtype=bool)
    for i, (f, s, _) in enumerate(examples):
        features[i, : len(f)] = f
        mask[i, : len(f)] = True
        if scales is not None:
            scales[i, : len(f)] = s
    rows = torch.tensor([r for _, _, r in examples], dtype=torch.int64)
    labels = {name: torch.from_numpy(label_values(column, rows.numpy())) for name, column in columns.items()}
    scales = None if scales is None else torch.from_numpy(scales)
    return Batch(decode(features, dtype), torch.from_numpy(mask), labels, rows, scales)


def label_values(column: LabelColumn, rows: np.ndarray) -> np.ndarray:
    """The column's values of `rows` as batches carry them: int64 classes, float32 targets."""
    values = column.values[rows]
    return values if column.kind == "classification" else values.astype(np.float32)


def prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run `batches` in a background thread, `depth` ahead: reading and padding overlap with the
    consumer's compute (numpy, zarr and h5py release the GIL while they read)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="ytune-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class StreamDataset(IterableDataset):
    """The stream as a PyTorch IterableDataset: the one way batches reach a training loop, through
    `DataLoader(ds, batch_size=None, num_workers=N)`. With no workers it streams in the loop's
    process, read ahead by the prefetch thread (and pinned there, `pin=True`); each of N workers
    opens its own files and reads its own share of the shards, so every example comes exactly once
    per epoch whatever N (the DataLoader pins their batches: pass it `pin_memory`). Call set_epoch
    before each epoch."""

    def __init__(self, reader: SplitReader, batch_size: int = 32, **stream_args) -> None:
        self.reader, self.batch_size = reader, batch_size
        self.stream_args = stream_args
        self.epoch = stream_args.pop("epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches in an epoch read by one process (each DataLoader worker cuts its own last batch,
        so N workers yield up to N - 1 more)."""
        keep = self.stream_args.get("keep")
        rows = len(self.reader) if keep is None else int(np.count_nonzero(keep))
        return -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self.reader.stream(self.batch_size, epoch=self.epoch, **self.stream_args)
        reader = Cache(self.reader.cache.path).split(self.reader.name)  # this worker's own file handles
        args = {**self.stream_args, "prefetch": 0, "pin": False}  # the DataLoader reads ahead and pins
        return reader.stream(self.batch_size, epoch=self.epoch, worker=(info.id, info.num_workers), **args)

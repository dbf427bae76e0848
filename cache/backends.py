"""The two shard formats, behind one small interface: write a shard's three arrays, open them.

Zarr v3 (default) stores a shard as a group directory; each array is cut into chunk files of about
CHUNK_BYTES, uncompressed (encoder features do not compress, and reads must be fast). Since format
version 2 every chunk carries a checksum the format itself checks on every read (zarr's CRC32C
codec, HDF5's Fletcher-32 filter), so a flipped byte is an error in ytune and in plain zarr or h5py
alike, never features trained on in silence. Zarr's own
sharding codec is not used: a ytune shard is already the unit of distribution (tens of MB), and
measured here it read slower than plain chunks (docs/cache-format.md, "Chunking and codecs").
HDF5 stores a shard as one file with the same three datasets, chunked the same way. Either is
readable with plain zarr or h5py: see docs/cache-format.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from ytune.cache.files import fsync_tree
from ytune.cache.format import FEATURES, OFFSETS, ROW, SCALES, SUFFIXES, int8_group, shard_suffix

CHUNK_BYTES = 8 << 20  # large sequential reads, still small enough for random access to one example


@dataclass
class ShardArrays:
    """Open arrays of one shard; all three slice like numpy arrays."""

    features: Any  # [tokens, layers, hidden]
    offsets: Any  # [rows + 1]
    row: Any  # [rows]
    scales: Any = None  # [tokens, layers, groups] float16, in an int8 cache (format.widen)
    handle: Any = None  # the open h5py.File, kept alive while the arrays are used


@dataclass
class ArraySpec:
    """One array of a shard to create: chunked by `chunks`, holding `data` when given (else zeros),
    with a checksum in every chunk when `checksums` (format version 2 on)."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    checksums: bool
    data: np.ndarray | None = None
    chunk_rows: int | None = None  # None: about CHUNK_BYTES (`chunks`)

    @property
    def chunks(self) -> tuple[int, ...]:
        if self.chunk_rows is not None:
            return (self.chunk_rows, *self.shape[1:])
        return chunks(self.shape, self.dtype)


class ShardSink:
    """A shard being written: its features (and an 8-bit cache's scales) arrive in order, batch by
    batch, while the encoder runs.

    Blocks are buffered to whole chunks before they reach the store, so every chunk is written once
    (a partial chunk would be read back and rewritten), and `sync` makes each chunk durable as it
    goes: when the last batch arrives, only the last chunk's write and fsync remain. The streamed
    arrays share their chunk rows and are written chunk by chunk in lockstep.
    """

    def __init__(
        self,
        arrays: list[Any],
        tokens: int,
        flush: Callable[[], None],
        sync: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self.arrays, self.tokens, self.chunk, self._close = arrays, tokens, arrays[0].chunks[0], close
        self.flush, self.sync = flush, sync
        self.written = 0
        self.pending: list[list[np.ndarray]] = [[] for _ in arrays]

    @property
    def features(self) -> Any:
        return self.arrays[0]

    def append(self, *blocks: np.ndarray) -> None:
        """The next tokens of every streamed array: features, then an int8 shard's scales."""
        for pending, block in zip(self.pending, blocks, strict=True):
            pending.append(block)
        # One chunk a write, each flushed to the format, whatever the batches: HDF5 places checksummed
        # chunks as writes and flushes come, so only the same sequence gives the same bytes (a
        # resumed cache's). The fsync, the costly part, stays once a batch.
        written = self.written
        while sum(len(b) for b in self.pending[0]) >= self.chunk:
            self._flush(self.chunk)
            self.flush()
        # What waits for the next chunk is copied: the caller may reuse its buffers (extraction's
        # page-locked ones) as soon as this returns.
        self.pending = [[np.concatenate(p)] if p else [] for p in self.pending]
        if self.written > written:
            self.sync()

    def _flush(self, count: int) -> None:
        for i, pending in enumerate(self.pending):
            data = pending[0] if len(pending) == 1 else np.concatenate(pending)
            if self.written + len(data) > self.tokens:
                raise ValueError(f"{self.written + len(data)} tokens sent to a shard of {self.tokens}")
            self.arrays[i][self.written : self.written + count] = data[:count]
            self.pending[i] = [data[count:]] if count < len(data) else []
        self.written += count

    def close(self) -> None:
        """Write the rest; the shard must then be complete."""
        try:
            if self.pending[0]:
                self._flush(sum(len(b) for b in self.pending[0]))
            if self.written != self.tokens:
                raise ValueError(f"shard closed after {self.written} of its {self.tokens} tokens")
        finally:
            self.release()

    def release(self) -> None:
        """Let go of open files (also when the shard is abandoned half-written)."""
        if self._close is not None:
            self._close()
            self._close = None


class Backend(ABC):
    """One shard format. Both lay out the same three arrays, chunked the same way (`chunks`); a
    backend says only how to make its container and arrays, make them durable, and open them."""

    name: str
    suffix: str

    def create(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        offsets: np.ndarray,
        row: np.ndarray,
        attrs: dict,
        checksums: bool,
    ) -> ShardSink:
        """Start a shard at `path` whose features [tokens, layers, hidden] arrive through the sink,
        with scales [tokens, layers, groups] (float16) when `dtype` is int8; offsets and row are written
        now. `checksums` (format version 2 on) puts a checksum in every chunk; a resumed version 1
        cache goes on without, so all its shards read the same way."""
        container = self._container(path, attrs)
        streamed = [ArraySpec(FEATURES, shape, dtype, checksums)]
        if dtype == np.int8:
            rows = streamed[0].chunks[0]  # chunk for chunk with the features: one write order for both
            groups = (*shape[:2], shape[2] // int8_group(shape[2]))
            streamed.append(ArraySpec(SCALES, groups, np.dtype(np.float16), checksums, chunk_rows=rows))
        try:
            arrays = [self._array(container, spec) for spec in streamed]
            for key, data in ((OFFSETS, offsets), (ROW, row)):
                self._array(container, ArraySpec(key, data.shape, data.dtype, checksums, data))
        except BaseException:
            self._close(container)
            raise
        return ShardSink(
            arrays,
            shape[0],
            flush=lambda: self._flush(container),
            sync=lambda: self._sync(container, path),
            close=lambda: self._close(container),
        )

    @abstractmethod
    def open(self, path: Path) -> ShardArrays:
        """The shard's arrays, for reading."""

    @abstractmethod
    def _container(self, path: Path, attrs: dict) -> Any:
        """The new, empty shard at `path`, with its attributes."""

    @abstractmethod
    def _array(self, container: Any, spec: ArraySpec) -> Any:
        """A new array of the shard as `spec` says."""

    @abstractmethod
    def _flush(self, container: Any) -> None:
        """Hand what the format buffers to the file after each chunk (no fsync)."""

    @abstractmethod
    def _sync(self, container: Any, path: Path) -> None:
        """Make the features written so far durable."""

    @abstractmethod
    def _close(self, container: Any) -> None:
        """Let go of the container's open files, if it keeps any."""


def chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """An array's chunk shape: whole rows, about CHUNK_BYTES, and equal-sized, because both formats
    store the last chunk whole: a fixed size left up to one chunk of zeros per shard."""
    per_row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    count = -(-shape[0] * per_row // CHUNK_BYTES)
    return (max(1, -(-shape[0] // max(1, count))), *shape[1:])


class ZarrBackend(Backend):
    name = "zarr"
    suffix = SUFFIXES[name]

    def _container(self, path: Path, attrs: dict) -> zarr.Group:
        return zarr.open_group(str(path), mode="w-", attributes=attrs)

    def _array(self, group: zarr.Group, spec: ArraySpec) -> zarr.Array:
        array = group.create_array(
            spec.key,
            shape=spec.shape,
            dtype=spec.dtype,
            chunks=spec.chunks,
            compressors=[Crc32cCodec()] if spec.checksums else None,  # checks, never compresses
            fill_value=0,
        )
        if spec.data is not None:
            array[...] = spec.data
        return array

    def _sync(self, group: zarr.Group, path: Path) -> None:
        # offsets and row are fsynced at commit; while features arrive only their chunk files change
        fsync_tree(path / FEATURES)

    def _flush(self, group: zarr.Group) -> None:
        pass  # each chunk is its own file, written whole

    def _close(self, group: zarr.Group) -> None:
        pass  # a zarr group keeps no files open between writes

    def open(self, path: Path) -> ShardArrays:
        group = zarr.open_group(str(path), mode="r")
        return ShardArrays(group[FEATURES], group[OFFSETS], group[ROW], group.get(SCALES))


class HDF5Backend(Backend):
    name = "hdf5"
    suffix = SUFFIXES[name]

    def _container(self, path: Path, attrs: dict) -> h5py.File:
        # libver="latest": compact chunk indexes, much less overhead per dataset than the default.
        f = h5py.File(path, "w-", libver="latest")
        try:
            f.attrs.update(attrs)
        except BaseException:
            f.close()
            raise
        return f

    def _array(self, f: h5py.File, spec: ArraySpec) -> h5py.Dataset:
        # track_times=False: the same arrays give the same bytes, so a resumed cache is bit-identical.
        return f.create_dataset(
            spec.key,
            shape=spec.shape,
            dtype=spec.dtype,
            data=spec.data,
            chunks=spec.chunks,
            fletcher32=spec.checksums,
            track_times=False,
        )

    def _flush(self, f: h5py.File) -> None:
        f.flush()

    def _sync(self, f: h5py.File, path: Path) -> None:
        f.flush()
        fsync_tree(path)

    def _close(self, f: h5py.File) -> None:
        f.close()

    def open(self, path: Path) -> ShardArrays:
        f = h5py.File(path, "r")
        return ShardArrays(f[FEATURES], f[OFFSETS], f[ROW], f.get(SCALES), handle=f)


BACKENDS: dict[str, Backend] = {"zarr": ZarrBackend(), "hdf5": HDF5Backend()}


def get_backend(name: str) -> Backend:
    shard_suffix(name)  # refuses an unknown backend in one sentence
    return BACKENDS[name]

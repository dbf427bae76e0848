"""The two shard formats, behind one small interface: write a shard's three arrays, open them.

Zarr v3 (default) stores a shard as a group directory; each array is cut into chunk files of about
CHUNK_BYTES, uncompressed (encoder features do not compress, and reads must be fast). Zarr's own
sharding codec is not used: a ytune shard is already the unit of distribution (tens of MB), and
measured here it halved read speed (0.9 GB/s against 1.6-3.2 GB/s for plain chunks). HDF5 stores a shard as one file with the same three datasets, chunked the same way. Either
is readable with plain zarr or h5py: see docs/cache-format.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import zarr

from ytune.cache.format import FEATURES, OFFSETS, ROW
from ytune.errors import UserError

CHUNK_BYTES = 8 << 20  # large sequential reads, still small enough for random access to one example


@dataclass
class ShardArrays:
    """Open arrays of one shard; all three slice like numpy arrays."""

    features: Any  # [tokens, layers, hidden]
    offsets: Any  # [rows + 1]
    row: Any  # [rows]
    handle: Any = None  # the open h5py.File, kept alive while the arrays are used


class ShardSink:
    """A shard being written: its features arrive in order, batch by batch, while the encoder runs.

    Blocks are buffered to whole chunks before they reach the store, so every chunk is written
    once (a partial chunk would be read back and rewritten), and `sync` makes what is written
    durable as it goes: when the last batch arrives, only the last chunk's write and fsync remain.
    """

    def __init__(self, features: Any, tokens: int, chunk: int, sync: Callable[[], None],
                 close: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.features, self.tokens, self.chunk, self.sync, self._close = features, tokens, chunk, sync, close
        self.written = 0
        self.pending: list[np.ndarray] = []

    def append(self, block: np.ndarray) -> None:
        self.pending.append(block)
        buffered = sum(len(b) for b in self.pending)
        whole = buffered // self.chunk * self.chunk
        if whole:
            self._flush(whole)
            self.sync()

    def _flush(self, count: int) -> None:
        data = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        if self.written + len(data) > self.tokens:
            raise ValueError(f"{self.written + len(data)} tokens sent to a shard of {self.tokens}")
        self.features[self.written : self.written + count] = data[:count]
        self.written += count
        self.pending = [data[count:]] if count < len(data) else []

    def close(self) -> None:
        """Write the rest; the shard must then be complete."""
        try:
            if self.pending:
                self._flush(sum(len(b) for b in self.pending))
            if self.written != self.tokens:
                raise ValueError(f"shard closed after {self.written} of its {self.tokens} tokens")
        finally:
            self.release()

    def release(self) -> None:
        """Let go of open files (also when the shard is abandoned half-written)."""
        if self._close is not None:
            self._close()
            self._close = None


class Backend(Protocol):
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
    ) -> ShardSink:
        """Start a shard at `path` whose features [tokens, layers, hidden] arrive through the sink."""

    def open(self, path: Path) -> ShardArrays: ...


def chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """An array's chunk shape: whole rows, about CHUNK_BYTES, and equal-sized, because both formats
    store the last chunk whole: a fixed size left up to one chunk of zeros per shard (6% of a real
    cache)."""
    per_row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    count = -(-shape[0] * per_row // CHUNK_BYTES)
    return (max(1, -(-shape[0] // max(1, count))), *shape[1:])


class ZarrBackend:
    name, suffix = "zarr", ".zarr"

    def create(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        offsets: np.ndarray,
        row: np.ndarray,
        attrs: dict,
    ) -> ShardSink:
        group = zarr.open_group(str(path), mode="w-", attributes=attrs)

        def array(key: str, shape: tuple[int, ...], dtype: np.dtype) -> zarr.Array:
            return group.create_array(
                key, shape=shape, dtype=dtype, chunks=chunks(shape, dtype), compressors=None, fill_value=0
            )

        features = array(FEATURES, tuple(shape), dtype)
        for key, data in ((OFFSETS, offsets), (ROW, row)):
            array(key, data.shape, data.dtype)[...] = data
        # offsets and row are fsynced at commit; while features arrive only their chunk files change
        return ShardSink(features, shape[0], features.chunks[0], sync=lambda: fsync_tree(path / FEATURES))

    def open(self, path: Path) -> ShardArrays:
        group = zarr.open_group(str(path), mode="r")
        return ShardArrays(group[FEATURES], group[OFFSETS], group[ROW])


class HDF5Backend:
    name, suffix = "hdf5", ".h5"

    def create(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        offsets: np.ndarray,
        row: np.ndarray,
        attrs: dict,
    ) -> ShardSink:
        # track_times=False: the same arrays give the same bytes, so a resumed cache is bit-identical.
        # libver="latest": compact chunk indexes, 1 KB of overhead per dataset instead of about 5.
        f = h5py.File(path, "w-", libver="latest")
        try:
            f.attrs.update(attrs)
            features = f.create_dataset(
                FEATURES, shape=shape, dtype=dtype, chunks=chunks(shape, dtype), track_times=False
            )
            for key, data in ((OFFSETS, offsets), (ROW, row)):
                f.create_dataset(key, data=data, chunks=chunks(data.shape, data.dtype), track_times=False)
        except BaseException:
            f.close()
            raise
        return ShardSink(
            features, shape[0], features.chunks[0], sync=lambda: (f.flush(), fsync_tree(path)), close=f.close
        )

    def open(self, path: Path) -> ShardArrays:
        f = h5py.File(path, "r")
        return ShardArrays(f[FEATURES], f[OFFSETS], f[ROW], handle=f)


BACKENDS: dict[str, Backend] = {"zarr": ZarrBackend(), "hdf5": HDF5Backend()}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown cache backend {name!r}; choose one of {', '.join(BACKENDS)}.") from None


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def checksum(path: Path) -> str:
    """sha256 over a shard's files (relative names and bytes, in sorted order): one value for a
    zarr directory or an HDF5 file alike."""
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def is_whole(path: Path, size: int) -> bool:
    """The cheap check on every read and resume: the shard is there with the size the manifest
    recorded (truncation, deletion). Same-size damage needs the checksum: ytune cache verify."""
    return path.exists() and size_on_disk(path) == size


def fsync_tree(path: Path) -> None:
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

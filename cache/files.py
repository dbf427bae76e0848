"""The file operations every part of a cache shares: put a file or folder in place whole, checksum,
size, fsync, remove.

Written once here so that the writer, the manifest, the store verbs and the remote mirror make the
same promises. Only the standard library: the verbs that never open a shard (`ytune cache ls`) use
it without loading zarr or h5py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from ytune.cache.format import TMP_PREFIX
from ytune.errors import UserError

BLOCK = 1 << 22  # bytes read at a time while hashing


class staged:  # lowercase like contextlib's context managers (closing, suppress)
    """`final` written under a temporary name beside it, then put in place whole by one rename: a
    reader, or a run killed at any moment, sees the old `final` or the new one, never part of one.

    As a context manager it gives the temporary path, commits when the block ends and removes the
    temporary when the block raises. A shard, written across many calls, calls `commit` or `abort`
    itself. `durable` fsyncs the files before the rename and the folder after it, so a power cut
    cannot undo the commit; the local mirror of a store's cache, which can always be fetched again,
    skips both.
    """

    def __init__(self, final: Path, durable: bool = True) -> None:
        self.final, self.durable = Path(final), durable
        self.tmp = self.final.with_name(f"{TMP_PREFIX}{self.final.name}.{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Make the temporary `final`: fsync its files, rename, fsync the folder that holds it."""
        try:
            if self.durable:
                fsync_tree(self.tmp)
            os.replace(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise
        if self.durable:
            fsync_dir(self.final.parent)

    def abort(self) -> None:
        """Remove what was written: nothing half-written stays behind."""
        remove(self.tmp)


def _files(path: Path) -> list[Path]:
    """The files of a shard, in the order its checksum reads them: the file itself, or a folder's
    files sorted by path."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def sha256(chunks: Iterable[bytes]) -> str:
    """The one hash of the cache format (hex digest), over `chunks` in order."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def fingerprint(chunks: Iterable[bytes]) -> str:
    """A short name for content: the first 16 hex digits of its sha256 (cache ids, shard plans)."""
    return sha256(chunks)[:16]


def checksum(path: Path) -> str:
    """sha256 over a shard's files (relative names and bytes, in sorted order): one value for a
    zarr folder, an HDF5 file, a label or text file alike (docs/cache-format.md, "Checksums")."""
    return sha256(_named_contents(path))


def _named_contents(path: Path) -> Iterator[bytes]:
    for file in _files(path):
        yield str(file.relative_to(path)).encode() + b"\0"
        with open(file, "rb") as f:
            while block := f.read(BLOCK):
                yield block


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def is_whole(path: Path, size: int) -> bool:
    """The cheap check on every read and resume: the shard is there with the size the manifest
    recorded (truncation, deletion). Same-size damage needs the checksum: ytune cache verify."""
    return path.exists() and size_on_disk(path) == size


def fsync_tree(path: Path) -> None:
    """Make the contents of a file, or of every file in a folder, durable."""
    for file in _files(path):
        _fsync(file)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: without this a power cut can undo it."""
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or folder if it is there. Gone already, or going (another process evicting the
    same mirrored shard), is no error: whoever removes it, it ends removed."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def disk_error(e: OSError, where: Path) -> Exception:
    """A full disk is the user's to fix: one sentence, committed data intact, rerun to resume."""
    if e.errno == errno.ENOSPC:
        return UserError(
            f"the disk holding {where} is full; what was committed is intact, free space and "
            "run the same command again to resume."
        )
    return e

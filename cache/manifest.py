"""The manifest: the one file that says what a cache holds. A shard it does not list does not exist.

It is only ever replaced whole (write a temporary file, fsync, rename), so a reader sees the old
manifest or the new one, never a mix, and a writer killed at any moment leaves a valid cache. The
locks that order its changes live here too: the writer lock of a whole cache, and the short lock
around each read-change-replace of the manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ytune.cache.files import checksum, disk_error, staged
from ytune.cache.format import FORMAT_VERSION, LOCK, MANIFEST, MANIFEST_LOCK, TEXTS
from ytune.cache.identity import Identity
from ytune.errors import UserError


@dataclass
class ShardRecord:
    rows: int
    tokens: int
    bytes: int
    checksum: str  # sha256 of the shard's files (files.checksum)


@dataclass
class LabelRecord:
    kind: str  # "classification" | "regression"
    names: list[str] | None  # classification: label names in index order
    metrics: list[str]  # GLUE metrics of the task, the first selects the best epoch
    checksum: str  # sha256 of the label file


@dataclass
class SplitRecord:
    rows: int
    tokens: int
    text_fingerprint: str
    plan: str  # hash of the shard plan: a resumed job must cut the rows the same way
    num_shards: int
    texts: str  # checksum of <split>/texts.json
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    labels: dict[str, LabelRecord] = field(default_factory=dict)
    truncated: int = 0  # rows cut at max_length

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def small_files(self) -> dict[str, str]:
        """The split's label and text files (paths inside the split's folder) and their checksums."""
        files = {f"labels/{column}.json": label.checksum for column, label in sorted(self.labels.items())}
        return {**files, TEXTS: self.texts}


@dataclass
class Manifest:
    identity: Identity
    backend: str  # "zarr" | "hdf5"
    info: dict  # what is known but not part of the identity: encoder name, widths, layer count
    splits: dict[str, SplitRecord] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def cache_id(self) -> str:
        return self.identity.cache_id()

    def to_json(self) -> str:
        d = {
            "format_version": self.format_version,
            "cache_id": self.cache_id,
            "identity": self.identity.to_dict(),
            "backend": self.backend,
            "info": self.info,
            "splits": {name: asdict(s) for name, s in self.splits.items()},
        }
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            d = json.loads(text)
            version = d["format_version"]
            if not isinstance(version, int):
                raise TypeError(f"format_version {version!r} is not an integer")
            if version > FORMAT_VERSION:
                raise UserError(
                    f"{where} was written by a newer ytune (cache format {version}, this one reads up to "
                    f"{FORMAT_VERSION}); upgrade ytune."
                )
            splits = {}
            for name, s in d["splits"].items():
                shards = {k: ShardRecord(**v) for k, v in s.pop("shards").items()}
                labels = {k: LabelRecord(**v) for k, v in s.pop("labels").items()}
                splits[name] = SplitRecord(**s, shards=shards, labels=labels)
            return cls(Identity.from_dict(d["identity"]), d["backend"], d["info"], splits, version)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{where} is not a readable ytune manifest ({type(e).__name__}: {e}).") from None


def read_manifest(path: Path) -> Manifest:
    """The manifest of the cache at `path`; a clear error when there is none."""
    file = Path(path) / MANIFEST
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise UserError(f"{path} is not a ytune cache: it has no {MANIFEST}.") from None
    return Manifest.from_json(text, file)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically and durably."""
    write_durably(Path(path) / MANIFEST, manifest.to_json())


def write_durably(final: Path, text: str) -> str:
    """Replace `final` by a file holding `text`, atomically and durably (files.staged); its
    checksum. The manifest and the label and text files it lists are all written here."""
    try:
        with staged(final) as tmp:
            with open(tmp, "w") as f:
                f.write(text)
            digest = checksum(tmp)
    except OSError as e:
        raise disk_error(e, final.parent) from None
    return digest


def update_manifest(path: Path, change: Callable[[Manifest], None]) -> Manifest:
    """Read, change and replace the manifest under a lock, so ranks of one job committing shards at
    the same moment never lose each other's entries."""
    with _locked(Path(path) / MANIFEST_LOCK):
        manifest = read_manifest(path)
        change(manifest)
        write_manifest(path, manifest)
        return manifest


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def drop_shards(path: Path, split: str, names: Sequence[str]) -> None:
    """Forget damaged shards: the next extraction with the same arguments encodes them again."""
    update_manifest(path, lambda m: [m.splits[split].shards.pop(n, None) for n in names])


def take_lock(path: Path):
    """The writer lock of the cache at `path` (flock on its LOCK file, released by the kernel even
    on SIGKILL), or a refusal naming the process that holds it. Held while the file stays open."""
    f = open(path / LOCK, "a+")  # noqa: SIM115 (the open file is the lock: held for the writer's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"cache {path} is being written by {holder}; wait for it to finish.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f

"""Caches in object stores (any fsspec URL: s3://, gs://, az://, memory://, file://).

A cache at a URL is read through a local *mirror*: a folder that holds the cache's manifest,
label and text files in full (small, checked against the manifest on arrival) and its shards
only as training needs them. So every reader of a local cache (the stream, random access,
`cache info`, `cache label`) reads a remote one unchanged; only opening a shard goes through
`Fetcher.local`, which downloads it, checks its checksum, and keeps the shards of all mirrors
under one size limit, least recently used out first. The stream asks for the next shards while
it trains on the current one, so downloads overlap compute; an epoch that fits in the limit is
read from local disk the second time.

Where the store is and how to reach it come as fsspec takes them: credentials from the
environment or the provider's config files, endpoint URLs and the like as storage options
(`--storage-option endpoint_url=http://...`, set once per process with `set_storage_options`;
s3fs's `endpoint_url` is passed on as its `client_kwargs`). Options are never written to disk.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ytune.cache.files import checksum, remove, size_on_disk, staged
from ytune.cache.format import MANIFEST, default_root
from ytune.cache.manifest import Manifest
from ytune.errors import UserError

REMOTE = ".remote.json"  # in a mirror: the URL its shards come from
DEFAULT_LIMIT_BYTES = 20 * 2**30  # of shards kept on local disk, all mirrors together
AHEAD = 2  # shards fetched ahead of the one being read

_options: dict = {}


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def parse_storage_options(items: Sequence[str]) -> dict:
    """`--storage-option KEY=VALUE` items as options: true/false and numbers as JSON reads them,
    anything else a string."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--storage-option takes KEY=VALUE, not {item!r}.")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def set_storage_options(options: dict) -> None:
    """fsspec storage options for every store this process opens (`--storage-option`)."""
    _options.clear()
    _options.update(options)


def filesystem(url: str):
    """The fsspec file system of `url` and the path inside it; one sentence when it cannot be had."""
    import fsspec

    options = dict(_options)
    if url.startswith("s3://") and "endpoint_url" in options:
        options.setdefault("client_kwargs", {})["endpoint_url"] = options.pop("endpoint_url")
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ValueError, ImportError, TypeError) as e:
        raise UserError(f"cannot open {url}: {e}") from None
    return fs, path.rstrip("/")


def store_error(e: Exception, url: str) -> UserError:
    """What went wrong with a store, said once: no bucket, no credentials, no answer."""
    name = type(e).__name__
    if isinstance(e, FileNotFoundError):
        return UserError(f"{url} does not exist ({e}).")
    if isinstance(e, PermissionError) or "Credentials" in name or "credentials" in str(e):
        return UserError(f"access to {url} was refused or no credentials were found ({name}: {e}).")
    return UserError(f"cannot reach {url} ({name}: {e}).")


def _cat(fs, path: str, url: str) -> bytes:
    try:
        return fs.cat_file(path)
    except Exception as e:  # fsspec back ends raise their own types; each becomes one sentence
        raise store_error(e, url) from None


def mirror_root() -> Path:
    """Where mirrors live: $YTUNE_SHARD_CACHE, else `remote/` under the cache root."""
    return Path(os.environ.get("YTUNE_SHARD_CACHE") or default_root() / "remote")


def limit_bytes() -> int:
    """The local shard cache's size limit: $YTUNE_SHARD_CACHE_GB gigabytes, else 20 GiB."""
    gb = os.environ.get("YTUNE_SHARD_CACHE_GB")
    try:
        return int(float(gb) * 2**30) if gb else DEFAULT_LIMIT_BYTES
    except ValueError:
        raise UserError(f"$YTUNE_SHARD_CACHE_GB must be a number of gigabytes, not {gb!r}.") from None


def mirror(url: str) -> Path:
    """The local mirror of the cache at `url`, its manifest, label and text files brought up to date.
    Nothing in a mirror is fsynced: whatever a power cut loses is fetched again."""
    fs, root = filesystem(url)
    text = _cat(fs, f"{root}/{MANIFEST}", url).decode()
    manifest = Manifest.from_json(text, Path(url) / MANIFEST)
    path = mirror_root() / manifest.cache_id
    path.mkdir(parents=True, exist_ok=True)
    small = {
        f"{s}/{name}": digest
        for s, rec in manifest.splits.items()
        for name, digest in rec.small_files().items()
    }
    for name, digest in small.items():
        local = path / name
        if local.exists() and checksum(local) == digest:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        with staged(local, durable=False) as tmp:
            tmp.write_bytes(_cat(fs, f"{root}/{name}", url))
            if checksum(tmp) != digest:
                raise UserError(
                    f"{name} of {url} does not match its manifest checksum; run ytune cache verify {url}."
                )
    for name, content in ((REMOTE, json.dumps({"url": url.rstrip("/")})), (MANIFEST, text)):
        with staged(path / name, durable=False) as tmp:  # other processes may be reading the mirror
            tmp.write_text(content)
    return path


def url_of(path: Path) -> str | None:
    """The URL a mirror's shards come from; None for a local cache."""
    try:
        return json.loads((Path(path) / REMOTE).read_text())["url"]
    except FileNotFoundError:
        return None


class Fetcher:
    """Brings a mirror's shards to local disk: on demand, ahead of need, checked on arrival, within
    the shard cache's size limit. One per mirror and process; thread-safe."""

    _by_path: dict[tuple[int, Path], Fetcher] = {}

    def __init__(self, path: Path, url: str) -> None:
        self.path, self.url = Path(path), url
        self.fs, self.root = filesystem(url)
        self._lock = threading.Lock()
        self._pending: dict[Path, Future] = {}
        self._inflight: dict[Path, int] = {}  # bytes being downloaded, counted against the limit
        self._pinned: dict[Path, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="ytune-fetch")

    @classmethod
    def of(cls, path: Path) -> Fetcher | None:
        """The fetcher of a mirror (this process's own: DataLoader workers get theirs), or None."""
        url = url_of(path)
        if url is None:
            return None
        key = (os.getpid(), Path(path).resolve())
        if key not in cls._by_path:
            cls._by_path[key] = cls(path, url)
        return cls._by_path[key]

    def local(self, split: str, name: str, bytes_: int, digest: str) -> Path:
        """The shard on local disk, fetched now if it is not there yet; pinned until `release`."""
        final = self.path / split / name
        with self._lock:
            self._pinned[final] = self._pinned.get(final, 0) + 1
            future = self._pending.get(final)
            if future is None and not final.exists():
                future = self._pending[final] = self._pool.submit(self._fetch, split, name, bytes_, digest)
        try:
            if future is not None:
                future.result()
            os.utime(final)  # most recently used
        except BaseException:
            self.release(final)
            raise
        return final

    def release(self, final: Path) -> None:
        with self._lock:
            self._pinned[final] -= 1
            if not self._pinned[final]:
                del self._pinned[final]

    def prefetch(self, split: str, shards: Sequence[tuple[str, int, str]]) -> None:
        """Start fetching these (name, bytes, checksum) shards in the background."""
        with self._lock:
            for name, bytes_, digest in shards:
                final = self.path / split / name
                if final not in self._pending and not final.exists():
                    self._pending[final] = self._pool.submit(self._fetch, split, name, bytes_, digest)

    def _fetch(self, split: str, name: str, bytes_: int, digest: str) -> None:
        final = self.path / split / name
        try:
            self._make_room(final, bytes_)
            with staged(final, durable=False) as tmp:
                try:
                    self.fs.get(f"{self.root}/{split}/{name}", str(tmp), recursive=True)
                except Exception as e:
                    raise store_error(e, f"{self.url}/{split}/{name}") from None
                if checksum(tmp) != digest:
                    raise UserError(
                        f"shard {split}/{name} of {self.url} does not match its manifest checksum "
                        f"(damaged or replaced); run ytune cache verify {self.url}."
                    )
        finally:
            with self._lock:
                self._pending.pop(final, None)
                self._inflight.pop(final, None)

    def _make_room(self, final: Path, incoming: int) -> None:
        """Delete the least recently used shards (of every mirror) not in use, until `incoming`
        more bytes fit under the limit beside the downloads in flight."""
        limit = limit_bytes()
        with self._lock:
            shards = [p for p in mirror_root().glob("*/*/shard-*") if p.exists()]
            used = {p: size_on_disk(p) for p in shards}
            total = sum(used.values()) + sum(self._inflight.values())
            self._inflight[final] = incoming
            for p in sorted(shards, key=lambda p: p.stat().st_mtime):
                if total + incoming <= limit:
                    break
                if p in self._pinned:
                    continue
                remove(p)
                total -= used[p]

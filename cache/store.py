"""Managing caches as a whole: list, describe, verify, remove (the `ytune cache` verbs).

Listing and describing read manifests only; the shard backends (zarr, h5py, numpy) are imported
by the verbs that open shards, so `ytune cache ls` starts in a fraction of a second."""

from __future__ import annotations

import shutil
from pathlib import Path

from ytune.cache.format import LOCK, MANIFEST, MANIFEST_LOCK, TEXTS, default_root, shard_name
from ytune.cache.manifest import read_manifest
from ytune.errors import UserError


def resolve(path_or_id: str | Path, root: str | Path | None = None) -> Path:
    """A cache given by its path, or by its id under the cache root."""
    path = Path(path_or_id)
    if len(path.parts) == 1 and not path.exists():
        path = Path(root or default_root()) / path
    if not (path / MANIFEST).exists():
        raise UserError(f"no ytune cache at {path} (it has no {MANIFEST}).")
    return path


def list_caches(root: str | Path | None = None) -> list[dict]:
    root = Path(root or default_root())
    if not root.is_dir():
        return []
    caches = []
    for p in sorted(root.iterdir()):
        if (p / MANIFEST).exists():
            try:
                caches.append(summary(p))
            except UserError as e:  # one unreadable cache must not hide the others
                caches.append({"path": str(p), "error": str(e)})
    return caches


def summary(path: Path) -> dict:
    """The facts a user asks first: what encoder, which dataset and splits, how big, complete or not."""
    m = read_manifest(path)
    return {
        "path": str(path),
        "cache_id": m.cache_id,
        "encoder": m.info.get("encoder", "?"),
        "dataset": m.identity.dataset,
        "layers": list(m.identity.layers),
        "dtype": m.identity.dtype,
        "backend": m.backend,
        "splits": {
            name: {
                "rows": s.rows,
                "tokens": s.tokens,
                "shards": f"{len(s.shards)}/{s.num_shards}",
                "bytes": sum(r.bytes for r in s.shards.values()),
                "labels": sorted(s.labels),
                "truncated": s.truncated,
            }
            for name, s in m.splits.items()
        },
        "bytes": sum(r.bytes for s in m.splits.values() for r in s.shards.values()),
    }


def info(path: Path) -> dict:
    m = read_manifest(path)
    return {
        **summary(path),
        "identity": m.identity.to_dict(),
        "info": m.info,
        "format_version": m.format_version,
    }


def verify(path: Path, drop: bool = False) -> list[str]:
    """Recompute every checksum the manifest lists; return one line per problem, naming the shard
    label or text file (empty when the cache is sound). Planned shards the manifest does not list are
    named too. `drop` takes damaged shards out of the manifest, so that rerunning the extraction
    rebuilds just them."""
    from ytune.cache.backends import checksum, get_backend, size_on_disk
    from ytune.cache.writer import drop_shards, take_lock

    m = read_manifest(path)
    suffix = get_backend(m.backend).suffix
    problems = []
    for split, record in m.splits.items():
        damaged = []
        for name, shard in sorted(record.shards.items()):
            file = path / split / (name + suffix)
            if not file.exists():
                problem = "missing"
            elif size_on_disk(file) != shard.bytes:
                problem = f"{size_on_disk(file)} bytes, manifest says {shard.bytes}"
            elif checksum(file) != shard.checksum:
                problem = "checksum mismatch"
            else:
                continue
            problems.append(f"{split}/{file.name}: {problem}")
            damaged.append(name)
        for index in range(record.num_shards):
            if shard_name(index) not in record.shards:
                problems.append(
                    f"{split}/{shard_name(index)}{suffix}: not in the manifest (not written yet, or dropped)"
                )
        files = {f"labels/{column}.json": label.checksum for column, label in sorted(record.labels.items())}
        files.update({TEXTS: record.texts} if record.texts else {})
        for name, digest in files.items():
            if not (path / split / name).exists():
                problems.append(f"{split}/{name}: missing")
            elif checksum(path / split / name) != digest:
                problems.append(f"{split}/{name}: checksum mismatch")
        if drop and damaged:
            with take_lock(path):
                drop_shards(path, split, damaged)
    return problems


def check_url(url: str) -> None:
    """An fsspec URL that cannot be opened is refused before any work is done."""
    import fsspec

    try:
        fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise UserError(f"cannot write caches to {url}: {e}") from None


def publish(path: Path, url: str) -> str:
    """Copy a finished cache to an fsspec URL (object store, remote file system), the manifest
    last: a reader there sees a manifest only once every file it lists is in place. Files already
    there with the right size are skipped, so an interrupted upload resumes."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    target = f"{root.rstrip('/')}/{path.name}"
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name not in (LOCK, MANIFEST_LOCK))
    for file in sorted(files, key=lambda f: f.name == MANIFEST):
        remote = f"{target}/{file.relative_to(path).as_posix()}"
        if file.name == MANIFEST or not fs.exists(remote) or fs.size(remote) != file.stat().st_size:
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(file), remote)
    return f"{url.rstrip('/')}/{path.name}"


def remove(path: Path) -> None:
    """Delete a cache; refused while a writer holds it."""
    read_manifest(path)  # only ever delete what is a cache
    from ytune.cache.writer import take_lock

    take_lock(path).close()
    shutil.rmtree(path)

"""Managing caches as a whole: list, describe, verify, remove (the `ytune cache` verbs).

These verbs read manifests and check files; none opens a shard, so none imports the shard backends
(zarr, h5py, numpy) and `ytune cache ls` starts in a fraction of a second."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ytune.cache.files import checksum, size_on_disk
from ytune.cache.format import LOCK, MANIFEST, MANIFEST_LOCK, STAGING, default_root, shard_name, shard_suffix
from ytune.cache.manifest import Manifest, drop_shards, read_manifest, take_lock
from ytune.cache.remote import REMOTE, filesystem, is_url, mirror, store_error, url_of
from ytune.errors import UserError


def resolve(path_or_id: str | Path, root: str | Path | None = None) -> Path:
    """A cache given by its path, its URL (then its local mirror), or its id under the cache root."""
    if is_url(path_or_id) or (is_url(root or "") and len(Path(path_or_id).parts) == 1):
        return mirror(str(path_or_id) if is_url(path_or_id) else f"{str(root).rstrip('/')}/{path_or_id}")
    path = Path(path_or_id)
    if len(path.parts) == 1 and not path.exists():
        path = Path(root or default_root()) / path
    if not (path / MANIFEST).exists():
        raise UserError(f"no ytune cache at {path} (it has no {MANIFEST}).")
    return path


def list_caches(root: str | Path | None = None) -> list[dict]:
    """The caches under `root`, then (for a store, or the default root) the local staging copies
    left by extractions to a store that did not finish publishing, marked `staging`."""
    if is_url(root or ""):
        return list_remote(str(root)) + _local(staging_copies(), staging=True)
    root = Path(root or default_root())
    if not root.is_dir():
        return []
    caches = _local(sorted(p for p in root.iterdir() if (p / MANIFEST).exists()))
    return caches + (_local(staging_copies(), staging=True) if root == default_root() else [])


def listing(root: str | Path | None = None) -> list[str]:
    """`ytune cache ls`: a line per cache, saying where a cache is incomplete or a staging copy."""
    caches = list_caches(root)
    return [_line(c) for c in caches] or [f"no caches under {root or default_root()}"]


def _line(c: dict) -> str:
    staging = "  STAGING (a local copy for a store, kept until it is published)" if c.get("staging") else ""
    if "error" in c:
        return f"{c['path']}  unreadable: {c['error']}{staging}"
    splits = ", ".join(f"{n} {s['rows']} rows" for n, s in c["splits"].items())
    line = (
        f"{c['path']}  {c['encoder']}  {c['dataset']}  layers {','.join(map(str, c['layers']))} {c['dtype']}"
    )
    line += f"  [{splits}]  {c['bytes'] / 1e6:.1f} MB{staging}"
    if not c["complete"]:  # a cache that lacks shards says so here, not only in `cache info`
        counts = ", ".join(f"{s['shards']} {n} shards" for n, s in c["splits"].items())
        line += f"  INCOMPLETE: {counts}; rerun the same ytune extract to finish it"
    return line


def _local(paths: list[Path], staging: bool = False) -> list[dict]:
    caches = []
    for p in paths:
        try:
            caches.append({**summary(p), "staging": staging})
        except UserError as e:  # one unreadable cache must not hide the others
            caches.append({"path": str(p), "error": str(e), "staging": staging})
    return caches


def staging_root() -> Path:
    """Where an extraction to a store stages the cache on local disk (`rank-N/` per rank of a
    distributed job) until it is published."""
    return default_root() / STAGING


def staging_copies(cache_id: str = "*") -> list[Path]:
    """The staging copies on this machine (of one cache, given its id)."""
    root = staging_root()
    found = [*root.glob(f"{cache_id}/{MANIFEST}"), *root.glob(f"rank-*/{cache_id}/{MANIFEST}")]
    return sorted(f.parent for f in found)


def remove_staging(path: Path) -> None:
    """Delete a staging copy once it is published, and its rank folder if that is left empty."""
    shutil.rmtree(path)
    for parent in (path.parent, path.parent.parent):
        if parent.name.startswith("rank-") or parent == staging_root():
            try:
                parent.rmdir()
            except OSError:  # not empty: other caches are staged there
                break


def list_remote(root: str) -> list[dict]:
    """The caches under a store URL, from their manifests alone."""
    fs, prefix = filesystem(root)
    try:
        files = sorted(fs.glob(f"{prefix}/*/{MANIFEST}"))
    except Exception as e:  # fsspec back ends raise their own types
        raise store_error(e, root) from None
    out = []
    for file in files:
        url = f"{root.rstrip('/')}/{file.rsplit('/', 2)[-2]}"
        try:
            out.append(summary_of(Manifest.from_json(fs.cat_file(file).decode(), Path(file)), url))
        except UserError as e:
            out.append({"path": url, "error": str(e)})
    return out


def where(path: Path) -> str:
    """Where a cache lives, as the user names it: its URL for a mirror of a store's cache."""
    return url_of(path) or str(path)


def summary(path: Path) -> dict:
    """The facts a user asks first: what encoder, which dataset and splits, how big, complete or not."""
    return summary_of(read_manifest(path), where(path))


def summary_of(m: Manifest, where: str) -> dict:
    return {
        "path": where,
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
        "complete": all(s.complete for s in m.splits.values()),
    }


def info(path: Path) -> dict:
    """The summary, with the whole identity and what the extractor recorded."""
    m = read_manifest(path)
    return {
        **summary(path),
        "identity": m.identity.to_dict(),
        "info": m.info,
        "format_version": m.format_version,
    }


def contents(path: Path) -> str:
    """What verify checks: "N shards and M label files, X MB"."""
    splits = read_manifest(path).splits.values()
    shards = [r for s in splits for r in s.shards.values()]
    files = f"{len(shards)} shards and {sum(len(s.labels) for s in splits)} label files"
    return f"{files}, {sum(r.bytes for r in shards) / 1e6:.1f} MB"


def verify(path: Path, drop: bool = False) -> list[str]:
    """Recompute every checksum the manifest lists; return one line per problem, naming the shard
    label or text file (empty when the cache is sound). Planned shards the manifest does not list are
    named too. `drop` takes damaged shards out of the manifest, so that rerunning the extraction
    rebuilds just them."""
    m = read_manifest(path)
    if url_of(path):
        if drop:
            raise UserError(
                "--drop works on caches on local disk; extract to the store again to rebuild shards."
            )
        return verify_remote(path, m)
    suffix = shard_suffix(m.backend)
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
        for name, digest in record.small_files().items():
            if not (path / split / name).exists():
                problems.append(f"{split}/{name}: missing")
            elif checksum(path / split / name) != digest:
                problems.append(f"{split}/{name}: checksum mismatch")
        if drop and damaged:
            with take_lock(path):
                drop_shards(path, split, damaged)
    return problems


def verify_remote(path: Path, m: Manifest) -> list[str]:
    """`verify` of a cache in a store: every object listed is downloaded afresh and checked."""
    url = url_of(path)
    fs, root = filesystem(url)
    suffix, problems = shard_suffix(m.backend), []
    for split, record in m.splits.items():
        objects = {f"{name}{suffix}": shard.checksum for name, shard in sorted(record.shards.items())}
        objects.update(record.small_files())
        for name, digest in objects.items():
            with tempfile.TemporaryDirectory(dir=path) as tmp:
                local = Path(tmp) / "object"
                try:
                    fs.get(f"{root}/{split}/{name}", str(local), recursive=True)
                except FileNotFoundError:
                    problems.append(f"{split}/{name}: missing")
                    continue
                except Exception as e:  # fsspec back ends raise their own types
                    raise store_error(e, url) from None
                if checksum(local) != digest:
                    problems.append(f"{split}/{name}: checksum mismatch")
    return problems


BUCKETED = ("s3", "gs", "gcs", "az", "abfs")  # stores whose URLs start with a bucket that must exist


def check_url(url: str) -> None:
    """A store URL that cannot be reached is refused before any work is done."""
    fs, root = filesystem(url)
    if url.split("://")[0] not in BUCKETED:
        return
    bucket = root.strip("/").split("/")[0]
    try:
        found = fs.exists(bucket)
    except Exception as e:  # fsspec back ends raise their own types
        raise store_error(e, url) from None
    if not found:
        raise UserError(
            f"the bucket {bucket!r} of {url} does not exist (or these credentials cannot see it)."
        )


def publish(path: Path, url: str, shards_only: bool = False, manifest: Manifest | None = None) -> str:
    """Copy a finished cache to an fsspec URL (object store, remote file system), the manifest
    last: a reader there sees a manifest only once every file it lists is in place. Shard files
    already there with the right size are skipped, so an interrupted upload resumes; the small
    files (manifest, labels, texts) always go, so a new label column reaches the store.

    A distributed job's ranks first send only their shards (`shards_only`); rank 0 then sends the
    rest and `manifest`, its own merged with every rank's shard records."""
    fs, root = filesystem(url)
    target = f"{root}/{path.name}"
    files = sorted(
        f for f in path.rglob("*") if f.is_file() and f.name not in (LOCK, MANIFEST_LOCK, REMOTE, MANIFEST)
    )
    try:
        for file in files:
            name = file.relative_to(path).as_posix()
            remote = f"{target}/{name}"
            if "/shard-" not in f"/{name}":
                if shards_only:
                    continue
            elif fs.exists(remote) and fs.size(remote) == file.stat().st_size:
                continue
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(file), remote)
        if not shards_only:
            text = (manifest or read_manifest(path)).to_json()
            fs.pipe_file(f"{target}/{MANIFEST}", text.encode())
    except OSError as e:
        raise store_error(e, url) from None
    return publish_url(path, url)


def publish_url(path: Path, url: str) -> str:
    """Where `publish` puts the cache at `path`."""
    return f"{url.rstrip('/')}/{path.name}"


def remove(path: Path) -> None:
    """Delete a cache; refused while a writer holds it. A cache in a store loses its manifest
    first, so no reader sees it half deleted; the local staging copies of its extraction go too."""
    m = read_manifest(path)  # only ever delete what is a cache
    url = url_of(path)
    if url:
        for staged_copy in staging_copies(m.cache_id):
            take_lock(staged_copy).close()
            remove_staging(staged_copy)
        fs, root = filesystem(url)
        try:
            fs.rm_file(f"{root}/{MANIFEST}")
            fs.rm(root, recursive=True)
        except Exception as e:  # fsspec back ends raise their own types
            raise store_error(e, url) from None
    take_lock(path).close()
    shutil.rmtree(path)

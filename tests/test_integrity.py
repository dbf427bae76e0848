"""Nothing silent (issue 27, findings 1-3): a damaged chunk is refused on read, an unfinished cache
says so in `cache ls`, and a staging copy of a store's cache is removed once published, listed and
removable while it exists. Real caches of real SST-2 rows, a real S3-protocol server (moto's)."""

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import h5py
import pytest
import zarr

from ytune import ExtractConfig, cli, extract, load_glue
from ytune.cache.format import MANIFEST
from ytune.cache.manifest import drop_shards, read_manifest

TRAIN = ["--epochs", "1", "--width", "32", "--heads", "2", "--blocks", "1"]


def ytune(*argv) -> tuple[int, str, str]:
    """`ytune ARGV` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def small_cache(encoder, glue, root: Path, backend: str = "zarr", limit: int = 60) -> Path:
    """SST-2's first rows of train and validation, two or more shards each."""
    data = load_glue("sst2", ["train", "validation"], glue, limit=limit)
    cfg = ExtractConfig(layers=(-1,), cache_dir=root, backend=backend, shard_bytes=60_000, progress=False)
    return Path(extract(data, cfg, encoder=encoder).path)


def feature_chunk(shard: Path) -> Path:
    """A file holding feature chunk bytes: zarr's first chunk file, or the HDF5 file itself."""
    return sorted((shard / "features" / "c").rglob("*"))[-1] if shard.is_dir() else shard


def flip(file: Path, count: int = 64) -> None:
    """Invert `count` bytes in the middle of the file, leaving its size as it was."""
    data = bytearray(file.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = bytes(b ^ 0xFF for b in data[mid : mid + count])
    size = file.stat().st_size
    file.write_bytes(bytes(data))
    assert file.stat().st_size == size


def assert_damage_refused(code: int, err: str, shard: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("ytune: error:")]
    assert f"shard train/{shard}" in line and "damaged" in line, line
    return line


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_flipped_chunk_is_refused_by_train_and_by_plain_zarr_or_h5py(encoder, glue, tmp_path, backend):
    path = small_cache(encoder, glue, tmp_path / "caches", backend)
    assert read_manifest(path).format_version == 2
    code, out, err = ytune("train", "--cache", path, *TRAIN, "--out", tmp_path / "ok")
    assert code == 0, err  # an undamaged cache trains as before
    suffix = ".zarr" if backend == "zarr" else ".h5"
    shard = path / "train" / f"shard-00001{suffix}"
    flip(feature_chunk(shard))
    code, out, err = ytune("train", "--cache", path, *TRAIN, "--out", tmp_path / "bad")
    line = assert_damage_refused(code, err, shard.name)
    assert f"ytune cache verify --drop {path}, then rerun the extraction" in line, line
    # The format checks the chunk itself: plain zarr or h5py refuse it too.
    with pytest.raises((ValueError, OSError)):
        if backend == "zarr":
            zarr.open_group(str(shard), mode="r")["features"][...]
        else:
            with h5py.File(shard, "r") as f:
                f["features"][...]
    # The mend the sentence names: drop the shard, and `cache ls` says the cache is unfinished.
    assert ytune("cache", "verify", "--drop", path)[0] == 2
    code, out, err = ytune("cache", "ls", "--cache-dir", path.parent)
    assert code == 0, err
    shards = read_manifest(path).splits
    counts = f"{len(shards['train'].shards)}/{shards['train'].num_shards} train shards"
    assert f"INCOMPLETE: {counts}" in out and "rerun the same ytune extract" in out, out
    small_cache(encoder, glue, tmp_path / "caches", backend)  # the same extraction finishes it
    code, out, err = ytune("cache", "ls", "--cache-dir", path.parent)
    assert "INCOMPLETE" not in out, out
    assert ytune("train", "--cache", path, *TRAIN, "--out", tmp_path / "mended")[0] == 0


def test_random_access_refuses_a_damaged_chunk(encoder, glue, tmp_path):
    from ytune import open_cache
    from ytune.errors import UserError

    path = small_cache(encoder, glue, tmp_path / "caches")
    split = open_cache(path).split("train")
    flip(feature_chunk(split.shard_path(split.shards[0])))
    with pytest.raises(UserError, match=r"shard train/shard-00000\.zarr .* is damaged .* verify --drop"):
        for row in range(len(split)):
            split[row]


def test_a_resumed_version_1_cache_stays_without_checksums_and_reads(encoder, glue, tmp_path):
    path = small_cache(encoder, glue, tmp_path / "caches")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = 1  # as ytune before format 2 wrote it (no shards committed yet)
    (path / MANIFEST).write_text(json.dumps(manifest))
    for split in ("train", "validation"):
        drop_shards(path, split, list(read_manifest(path).splits[split].shards))
    small_cache(encoder, glue, tmp_path / "caches")
    assert read_manifest(path).format_version == 1
    features = zarr.open_group(str(path / "train" / "shard-00000.zarr"), mode="r")["features"]
    assert features.compressors == ()
    assert ytune("train", "--cache", path, *TRAIN, "--out", tmp_path / "v1")[0] == 0


# --------------------------------------------------------------------------------------------------
# A cache in an object store: its mirror's shards, and the staging copy of its extraction

from test_store import run_cli, s3  # noqa: E402, F401  (s3: the moto server fixture; skips without moto)


@pytest.fixture(scope="module")
def store(s3):  # noqa: F811
    """The moto server of test_store, emptied afterwards: moto keeps one state per process, and the
    next module's server would find this one's bucket."""
    yield s3
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{s3}/moto-api/reset", method="POST")).close()


def test_a_damaged_mirror_shard_is_refused_then_fetched_afresh(store, encoder, glue, tmp_path, monkeypatch):
    monkeypatch.setenv("YTUNE_CACHE", str(tmp_path / "local"))
    mirrors = tmp_path / "mirrors"
    data = load_glue("sst2", ["train", "validation"], glue, limit=60)
    cfg = ExtractConfig(layers=(-1,), cache_dir="s3://caches/flip", shard_bytes=60_000, progress=False)
    url = str(extract(data, cfg, encoder=encoder).path)
    env = {"YTUNE_SHARD_CACHE": str(mirrors)}
    first = run_cli(store, "train", "--cache", url, *TRAIN, "--out", str(tmp_path / "ok"), env=env)
    assert first.returncode == 0, first.stderr
    shard = mirrors / url.rsplit("/", 1)[-1] / "train" / "shard-00001.zarr"
    flip(feature_chunk(shard))
    damaged = run_cli(store, "train", "--cache", url, *TRAIN, "--out", str(tmp_path / "bad"), env=env)
    line = assert_damage_refused(damaged.returncode, damaged.stderr, shard.name)
    assert f"of cache {url} is damaged in its local copy" in line and "fetch it afresh" in line, line
    again = run_cli(store, "train", "--cache", url, *TRAIN, "--out", str(tmp_path / "again"), env=env)
    assert again.returncode == 0, again.stderr


def test_staging_is_removed_once_published_listed_while_it_exists_and_removable(
    store,
    encoder,
    glue,
    tmp_path,
    monkeypatch,
):
    local = tmp_path / "local"
    monkeypatch.setenv("YTUNE_CACHE", str(local))
    monkeypatch.setenv("YTUNE_SHARD_CACHE", str(tmp_path / "mirrors"))
    data = load_glue("sst2", ["validation"], glue, limit=30)
    cfg = ExtractConfig(layers=(-1,), cache_dir="s3://caches/staged", shard_bytes=60_000, progress=False)
    url = str(extract(data, cfg, encoder=encoder).path)
    cache_id = url.rsplit("/", 1)[-1]
    assert not (local / "staging").exists()  # published: no local copy left behind
    # What an upload that failed leaves: the whole cache staged on local disk.
    staged = Path(extract(data, replace(cfg, cache_dir=local / "staging"), encoder=encoder).path)
    assert staged == local / "staging" / cache_id
    ls = run_cli(store, "cache", "ls", "--cache-dir", "s3://caches/staged", env={"YTUNE_CACHE": str(local)})
    lines = ls.stdout.splitlines()
    assert ls.returncode == 0 and len(lines) == 2, ls.stdout + ls.stderr
    assert lines[0].startswith(url) and "STAGING" not in lines[0]
    assert lines[1].startswith(str(staged)) and "STAGING" in lines[1]
    shards = len(read_manifest(staged).splits["validation"].shards)
    again = extract(data, cfg, encoder=encoder)  # the rerun resumes from it, and removes it once published
    assert again.skipped_shards == shards
    assert not (local / "staging").exists()
    extract(data, replace(cfg, cache_dir=local / "staging"), encoder=encoder)
    rm = run_cli(store, "cache", "rm", url, env={"YTUNE_CACHE": str(local)})
    assert rm.returncode == 0, rm.stderr
    assert not (local / "staging").exists()

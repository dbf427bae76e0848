"""The cache contract, on real files in temporary folders, with both backends."""

import json
import subprocess
import sys
from pathlib import Path

import cache_job  # noqa: E402  (tests/ is on sys.path: conftest.py)
import h5py
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from ytune import UserError, open_cache
from ytune.cache import backends, store
from ytune.cache.format import LOCK, MANIFEST_LOCK, TMP_PREFIX, encode, int8_group
from ytune.cache.identity import Identity
from ytune.cache.writer import CacheWriter, plan_shards

BACKENDS = ["zarr", "hdf5"]
JOB = Path(__file__).with_name("cache_job.py")


def cache_files(path: Path) -> dict[str, bytes]:
    """Every byte of a cache but its lock files, keyed by relative name."""
    skip = {LOCK, MANIFEST_LOCK}
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name not in skip
    }


def run_job(root: Path, backend: str, dtype: str = "float16", *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), str(root), backend, dtype, *extra], capture_output=True, text=True
    )


@pytest.fixture(
    scope="module", params=[(b, d) for b in BACKENDS for d in ("float16", "bfloat16", "int8")], ids=str
)
def written(request, tmp_path_factory):
    backend, dtype = request.param
    root = tmp_path_factory.mktemp(f"{backend}-{dtype}")
    return Path(cache_job.run(str(root), backend, dtype)), dtype


def test_write_then_read_returns_the_exact_arrays(written):
    path, dtype = written
    split = open_cache(path).split("train")
    lengths = cache_job.lengths()
    assert len(split) == cache_job.ROWS
    for row in (0, 17, cache_job.ROWS - 1):
        expected = cache_job.stored(cache_job.features(row, int(lengths[row])), dtype)
        got = split[row].features
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_stream_yields_every_example_once_padded_and_labelled(written):
    path, dtype = written
    split = open_cache(path).split("train")
    lengths = cache_job.lengths()
    seen = []
    for batch in split.stream(batch_size=16, labels=["parity"], layers=[0, -1], seed=3, buffer_size=40):
        assert batch.features.shape[2] == 2 and batch.features.shape[:2] == batch.mask.shape
        for i, row in enumerate(batch.rows.tolist()):
            n = int(batch.mask[i].sum())
            assert n == lengths[row]
            full = cache_job.stored(cache_job.features(row, n), dtype)
            assert torch.equal(batch.features[i, :n], full[:, [0, 2]])
            assert not batch.features[i, n:].any()
            assert batch.labels["parity"][i] == lengths[row] % 2
        seen += batch.rows.tolist()
    assert sorted(seen) == list(range(cache_job.ROWS))


def test_shuffle_is_seeded_and_differs_between_epochs(written):
    split = open_cache(written[0]).split("train")
    order = lambda **kw: [r for b in split.stream(8, prefetch=0, **kw) for r in b.rows.tolist()]  # noqa: E731
    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert sorted(order(seed=1, epoch=1)) == list(range(cache_job.ROWS))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_see_every_example_once(written, workers):
    dataset = open_cache(written[0]).split("train").dataset(batch_size=8, labels=["parity"], seed=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        batches = list(loader)
        rows = [r for batch in batches for r in batch.rows.tolist()]
        assert sorted(rows) == list(range(cache_job.ROWS))
        assert len(dataset) <= len(batches) <= len(dataset) + workers - (workers > 0)  # len counts batches
    assert len(dataset) == -(-cache_job.ROWS // 8)


def test_bfloat16_is_stored_as_uint16_bits_and_plain_libraries_read_it(tmp_path):
    path = Path(cache_job.run(str(tmp_path / "z"), "zarr", "bfloat16"))
    manifest = json.loads((path / "manifest.json").read_text())
    shard = zarr.open_group(str(path / "train" / "shard-00000.zarr"), mode="r")
    assert shard.attrs["dtype"] == "bfloat16" and shard["features"].dtype == np.uint16
    offsets, rows = shard["offsets"][:], shard["row"][:]
    bits = shard["features"][offsets[0] : offsets[1]].astype(np.uint32) << 16
    expected = cache_job.features(int(rows[0]), int(offsets[1])).to(torch.bfloat16).float().numpy()
    assert np.array_equal(bits.view(np.float32), expected)
    assert manifest["splits"]["train"]["shards"]["shard-00000"]["rows"] == len(rows)

    h5 = Path(cache_job.run(str(tmp_path / "h"), "hdf5", "float16"))
    with h5py.File(h5 / "train" / "shard-00000.h5") as f:
        first = f["features"][f["offsets"][0] : f["offsets"][1]]
        assert np.array_equal(first, cache_job.features(int(f["row"][0]), len(first)).half().numpy())


def test_plan_is_deterministic_length_sorted_and_sized():
    lengths = cache_job.lengths()
    plan = plan_shards(lengths, bytes_per_token=100, shard_bytes=2_000)
    again = plan_shards(lengths, bytes_per_token=100, shard_bytes=2_000)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(plan, again, strict=True))
    stored = np.concatenate([s.rows for s in plan])
    assert sorted(stored.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[stored]) >= 0)
    assert all(s.tokens * 100 < 2_000 + 100 * lengths.max() for s in plan)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_storage_holds_no_padding(tmp_path, backend, dtype):
    path = Path(cache_job.run(str(tmp_path), backend, dtype, shard_bytes=300_000))
    shards = json.loads((path / "manifest.json").read_text())["splits"]["train"]["shards"]
    tokens = int(cache_job.lengths().sum())
    groups = cache_job.HIDDEN // int8_group(cache_job.HIDDEN)
    per_layer = {"float16": 2 * cache_job.HIDDEN, "int8": cache_job.HIDDEN + 2 * groups}[dtype]  # + scales
    ideal = tokens * len(cache_job.LAYERS) * per_layer + (2 * cache_job.ROWS + len(shards)) * 8
    on_disk = sum(r["bytes"] for r in shards.values())
    assert len(shards) > 1
    assert ideal <= on_disk < ideal * 1.01 + 8192 * len(shards)  # a small fixed header per shard file


@pytest.mark.parametrize(
    "backend,dtype", [(b, "float16") for b in BACKENDS] + [("zarr", "int8"), ("hdf5", "int8")]
)
@pytest.mark.parametrize("die_when", ["before", "mid", "after-rename"])
def test_a_killed_write_resumes_to_an_identical_cache(tmp_path, backend, dtype, die_when):
    reference = Path(cache_job.run(str(tmp_path / "ref"), backend, dtype))
    killed = run_job(tmp_path / "job", backend, dtype, "--die-at", "3", "--die-when", die_when)
    assert killed.returncode == -9
    path = tmp_path / "job" / reference.name
    with pytest.raises(UserError, match="incomplete"):
        open_cache(path).split("train")  # readers never see a half-written split
    resumed = run_job(tmp_path / "job", backend, dtype)
    assert resumed.returncode == 0, resumed.stderr
    assert cache_files(path) == cache_files(reference)
    assert not list(path.rglob(f"{TMP_PREFIX}*"))
    assert store.verify(path) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_names_a_corrupted_or_missing_shard(tmp_path, backend):
    path = Path(cache_job.run(str(tmp_path), backend, "float16"))
    suffix = ".zarr" if backend == "zarr" else ".h5"
    shard = path / "train" / f"shard-00002{suffix}"
    victim = (
        next(f for f in sorted(shard.rglob("*")) if f.is_file() and f.stat().st_size > 10_000)
        if shard.is_dir()
        else shard
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert store.verify(path) == [f"train/shard-00002{suffix}: checksum mismatch"]
    victim.write_bytes(bytes(data[:-100]))
    assert "train/shard-00002" in store.verify(path)[0]
    with pytest.raises(UserError, match="shard-00002"):
        for _ in open_cache(path).split("train").stream(8, shuffle=False):
            pass
    other = path / "train" / f"shard-00004{suffix}"
    __import__("shutil").rmtree(other) if other.is_dir() else other.unlink()
    assert f"train/shard-00004{suffix}: missing" in store.verify(path)


def test_a_second_writer_is_refused(tmp_path):
    ident = cache_job.identity("float16")
    with (
        CacheWriter(tmp_path, ident, info={"hidden_size": 4}),
        pytest.raises(UserError, match="being written"),
    ):
        CacheWriter(tmp_path, ident)
    CacheWriter(tmp_path, ident).close()  # the lock goes with its holder
    killed = run_job(tmp_path, "zarr", "float16", "--die-at", "1")
    assert killed.returncode == -9  # a holder killed by SIGKILL leaves no stale lock behind
    CacheWriter(tmp_path / "x", ident).close()
    with pytest.raises(UserError, match="being written"), CacheWriter(tmp_path, ident):
        store.remove(tmp_path / ident.cache_id())


def test_a_mismatched_identity_is_refused_with_the_fields_named(tmp_path):
    path = Path(cache_job.run(str(tmp_path), "zarr", "float16"))
    other = Identity("enc-fp", "tok-fp", 128, "longest_first", (0, 3), "float16", "toy")
    with pytest.raises(UserError, match="max_length, layers"):
        open_cache(path, identity=other)
    assert open_cache(path, identity=cache_job.identity("float16")).identity.layers == cache_job.LAYERS


def test_labels_attach_to_an_existing_cache_without_touching_features(tmp_path):
    path = Path(cache_job.run(str(tmp_path), "zarr", "float16"))
    before = {k: v for k, v in cache_files(path).items() if "shard-" in k}
    with CacheWriter(tmp_path, cache_job.identity("float16")) as w:
        w.set_labels(
            "train", "length", [float(n) for n in cache_job.lengths()], "regression", None, ["pearson"]
        )
    column = open_cache(path).labels("train", "length")
    assert column.kind == "regression" and np.array_equal(column.values, cache_job.lengths().astype(float))
    assert {k: v for k, v in cache_files(path).items() if "shard-" in k} == before
    assert store.verify(path) == []
    with pytest.raises(UserError, match="has no label column 'nope'"):
        open_cache(path).labels("train", "nope")


def test_a_newer_format_version_is_refused(tmp_path):
    path = Path(cache_job.run(str(tmp_path), "zarr", "float16"))
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(UserError, match="newer ytune"):
        open_cache(path)


def test_float16_overflow_names_the_layer():
    features = torch.zeros(3, 2, 4)
    features[1, 1, 2] = 1e6
    with pytest.raises(UserError, match="layer 12"):
        encode(features, "float16", [6, 12])
    with pytest.raises(UserError, match="layer 12"):
        encode(features, "int8", [6, 12])  # its scales are float16
    assert encode(features, "bfloat16", [6, 12])[0].dtype == np.uint16


def test_cache_verbs_on_the_command_line(tmp_path):
    path = Path(cache_job.run(str(tmp_path), "zarr", "float16"))
    cli = [sys.executable, "-m", "ytune.cli", "cache"]
    ls = subprocess.run([*cli, "ls", "--cache-dir", str(tmp_path)], capture_output=True, text=True)
    assert ls.returncode == 0 and str(path) in ls.stdout and "train 300 rows" in ls.stdout
    assert "float16" in ls.stdout and "layers " in ls.stdout  # two caches of one dataset tell apart
    before = subprocess.run([*cli, "--cache-dir", str(tmp_path), "ls"], capture_output=True, text=True)
    assert before.stdout == ls.stdout  # the root given before the verb is the same root
    piped = subprocess.run(
        f"{sys.executable} -m ytune.cli cache info {path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert piped.stdout == "{\n" and "Traceback" not in piped.stderr
    info = subprocess.run(
        [*cli, "info", path.name, "--cache-dir", str(tmp_path)], capture_output=True, text=True
    )
    summary = json.loads(info.stdout)
    assert summary["cache_id"] == path.name and summary["splits"]["train"]["rows"] == 300
    ok = subprocess.run([*cli, "verify", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip().startswith(f"ok: {path} (") and "MB, checked" in ok.stdout
    rm = subprocess.run([*cli, "rm", str(path)], capture_output=True, text=True)
    assert rm.returncode == 0 and not path.exists()
    gone = subprocess.run([*cli, "info", str(path)], capture_output=True, text=True)
    assert gone.returncode == 2 and "no ytune cache" in gone.stderr


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shard_streamed_batch_by_batch_equals_one_written_whole(tmp_path, monkeypatch, backend, dtype):
    """Extraction appends each batch to the open shard (buffered to whole chunks); the files must be
    the very bytes of the same shard written at once, and a wrong token count is refused."""
    monkeypatch.setattr(backends, "CHUNK_BYTES", 20_000)  # about 140 tokens: batches straddle chunks
    lengths = cache_job.lengths()
    paths = {}
    for how in ("whole", "streamed"):
        w = CacheWriter(
            tmp_path / how, cache_job.identity(dtype), backend, info={"hidden_size": cache_job.HIDDEN}
        )
        texts = [f"toy row {i}" for i in range(len(lengths))]
        shard = w.plan_split("train", lengths, "text-fp", shard_bytes=1 << 30, texts=(texts, None))[0]
        block = encode(
            torch.cat(
                [cache_job.features(int(r), int(n)) for r, n in zip(shard.rows, shard.lengths, strict=True)]
            ),
            dtype,
            cache_job.LAYERS,
        )
        if how == "whole":
            w.write_shard("train", shard, *block)
        else:
            writing = w.open_shard("train", shard, cache_job.HIDDEN)
            for a, b in zip(shard.offsets[:-1:7], [*shard.offsets[7:-1:7], shard.offsets[-1]], strict=True):
                writing.append(*(x[a:b] for x in block if x is not None))  # 7 rows: straddle chunk bounds
            writing.commit()
            short = w.open_shard("train", shard, cache_job.HIDDEN)
            short.append(*(x[:-1] for x in block if x is not None))
            with pytest.raises(ValueError, match="closed after"):
                short.commit()
            assert not list((w.path / "train").glob(f"{TMP_PREFIX}*"))  # the refused shard left nothing
        w.close()
        paths[how] = w.path
    assert cache_files(paths["whole"]) == cache_files(paths["streamed"])

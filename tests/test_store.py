"""Caches in an object store: a real S3-protocol server (moto's, on 127.0.0.1) reached through s3fs.

Nothing inside ytune is mocked: extraction publishes to the server, training streams shards back
through the local shard cache, and the errors a user meets (no bucket, no credentials, a damaged
object) are the server's own answers turned into one sentence.
"""

import csv
import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from ytune import (  # noqa: E402  # noqa: E402
    ExtractConfig,
    HeadSpec,
    TrainConfig,
    extract,
    load_glue,  # noqa: E402
    open_cache,  # noqa: E402
    train,
)
from ytune.cache.files import size_on_disk  # noqa: E402
from ytune.cache.remote import set_storage_options  # noqa: E402

CLI = [sys.executable, "-m", "ytune.cli"]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A fresh S3 server with the bucket `caches`; its endpoint URL."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("caches")
    set_storage_options({"endpoint_url": endpoint})
    yield endpoint
    set_storage_options({})
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


@pytest.fixture
def shard_cache(tmp_path, monkeypatch) -> Path:
    """A private local shard cache (mirrors), so every test downloads afresh."""
    monkeypatch.setenv("YTUNE_SHARD_CACHE", str(tmp_path / "mirrors"))
    return tmp_path / "mirrors"


@pytest.fixture(scope="module")
def published(s3, encoder, glue, tmp_path_factory):
    """SST-2's first 200 training and validation rows, extracted straight to the store in small shards."""
    os.environ["YTUNE_CACHE"] = str(tmp_path_factory.mktemp("local"))  # where the job stages its shards
    data = load_glue("sst2", ["train", "validation"], glue, limit=200)
    cfg = ExtractConfig(layers=(-1,), cache_dir="s3://caches/glue", shard_bytes=400_000, progress=False)
    result = extract(data, cfg, encoder=encoder)
    os.environ.pop("YTUNE_CACHE")
    return result


def s3fs_of(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def run_cli(s3: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **CREDENTIALS, **(env or {})}
    command = [*CLI, *args, "--storage-option", f"endpoint_url={s3}"]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "progress": False, **kw})


def test_training_from_the_store_equals_training_from_local_disk(s3, published, shard_cache, tmp_path):
    url = str(published.path)
    assert url.startswith("s3://caches/glue/")
    local = open_cache(url).path  # the mirror: manifest, labels, texts; shards arrive as read
    assert not list(local.glob("*/shard-*"))
    head = [HeadSpec("y", config={"width": 32, "heads": 2, "blocks": 1})]
    remote = train(url, head, quick(), tmp_path / "remote")
    assert len(list(local.glob("train/shard-*"))) == open_cache(url).manifest.splits["train"].num_shards
    on_disk = tmp_path / "disk" / local.name
    s3fs_of(s3).get(url.removeprefix("s3://"), str(on_disk), recursive=True)
    assert train(on_disk, head, quick(), tmp_path / "disk-run") == remote


def test_cache_verbs_read_the_store(s3, published, shard_cache):
    url = str(published.path)
    ls = run_cli(s3, "cache", "ls", "--cache-dir", "s3://caches/glue")
    assert ls.returncode == 0 and url in ls.stdout and "glue/sst2[:200]" in ls.stdout, ls.stderr
    info = run_cli(s3, "cache", "info", url)
    assert json.loads(info.stdout)["path"] == url
    verify = run_cli(s3, "cache", "verify", url)
    assert verify.returncode == 0 and verify.stdout.startswith(f"ok: {url} ("), verify.stderr


def test_a_killed_upload_resumes_to_the_identical_cache(s3, encoder, glue, tmp_path, monkeypatch):
    monkeypatch.setenv("YTUNE_CACHE", str(tmp_path / "local"))
    data = load_glue("sst2", ["validation"], glue, limit=60)
    cfg = ExtractConfig(layers=(-1,), cache_dir="s3://caches/resume", shard_bytes=100_000, progress=False)
    first = extract(data, cfg, encoder=encoder)
    assert not (tmp_path / "local" / "staging").exists()  # a published cache leaves no staging copy
    # A job killed while uploading keeps its staging copy: the same extraction, staged only.
    extract(data, replace(cfg, cache_dir=tmp_path / "local" / "staging"), encoder=encoder)
    fs = s3fs_of(s3)
    root = str(first.path).removeprefix("s3://")
    objects = {p: fs.cat_file(p) for p in fs.find(root)}
    # What a kill midway through the upload leaves: some shards, no manifest (it goes last).
    fs.rm_file(f"{root}/manifest.json")
    for p in sorted(p for p in objects if "/shard-00001" in p):
        fs.rm_file(p)
    with pytest.raises(Exception, match="does not exist"):
        open_cache(first.path)  # readers never see the half cache
    again = extract(data, cfg, encoder=encoder)
    assert again.skipped_shards == first.skipped_shards + len(
        open_cache(first.path).split("validation").shards
    )
    assert {p: fs.cat_file(p) for p in fs.find(root)} == objects


def test_a_damaged_object_is_named_by_verify_and_refused_by_train(s3, published, shard_cache, tmp_path):
    url = str(published.path)
    fs = s3fs_of(s3)
    root = url.removeprefix("s3://")
    chunk = sorted(p for p in fs.find(f"{root}/train/shard-00001.zarr") if "/c/" in p)[0]
    data = bytearray(fs.cat_file(chunk))
    data[-1] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    try:
        verify = run_cli(s3, "cache", "verify", url, env={"YTUNE_SHARD_CACHE": str(shard_cache)})
        assert verify.returncode == 2 and "train/shard-00001.zarr: checksum mismatch" in verify.stdout
        args = ["train", "--cache", url, "--epochs", "1", "--width", "32", "--heads", "2"]
        trained = run_cli(
            s3, *args, "--out", str(tmp_path / "r"), env={"YTUNE_SHARD_CACHE": str(shard_cache)}
        )
        assert trained.returncode == 2 and "Traceback" not in trained.stderr
        assert "shard train/shard-00001.zarr of s3://" in trained.stderr and "checksum" in trained.stderr
        assert not list(shard_cache.glob("*/train/shard-00001.zarr"))  # never kept
    finally:
        data[-1] ^= 0xFF
        fs.pipe_file(chunk, bytes(data))


def test_the_local_shard_cache_stays_under_its_limit(s3, published, shard_cache, monkeypatch):
    manifest = open_cache(published.path).manifest
    sizes = sorted(r.bytes for r in manifest.splits["train"].shards.values())
    limit = sum(sizes[-4:])  # room for the shard being read and the ones fetched ahead, not the epoch
    assert limit < sum(sizes)
    monkeypatch.setenv("YTUNE_SHARD_CACHE_GB", str(limit / 2**30))
    reader = open_cache(published.path).split("train")
    peak = 0
    for _ in reader.stream(8, seed=1):
        peak = max(peak, sum(size_on_disk(p) for p in shard_cache.glob("*/train/shard-*")))
    assert 0 < peak <= limit


def test_no_bucket_no_credentials_and_no_server_are_one_sentence(s3, tmp_path, glue):
    missing = run_cli(s3, "train", "--cache", "s3://nosuchbucket/caches/0123456789abcdef")
    assert missing.returncode == 2 and missing.stderr.count("ytune: error:") == 1
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    nowhere = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS} | nowhere
    ls = [*CLI, "cache", "ls", "--cache-dir", "s3://caches/glue", "--storage-option"]
    bare = subprocess.run([*ls, f"endpoint_url={s3}"], capture_output=True, text=True, env=env)
    assert bare.returncode == 2 and "credentials" in bare.stderr and "Traceback" not in bare.stderr, (
        bare.stderr
    )
    local = tmp_path / "local"
    args = ["extract", "--task", "sst2", "--data-dir", str(glue), "--limit", "4"]
    nobucket = run_cli(s3, *args, "--cache-dir", "s3://nosuchbucket/c", env={"YTUNE_CACHE": str(local)})
    assert nobucket.returncode == 2 and "nosuchbucket" in nobucket.stderr and not local.exists(), (
        nobucket.stderr
    )
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    credentials = {**os.environ, **CREDENTIALS}
    gone = subprocess.run([*ls, f"endpoint_url={closed}"], capture_output=True, text=True, env=credentials)
    assert (
        gone.returncode == 2
        and "cannot reach s3://caches/glue" in gone.stderr
        and "Traceback" not in gone.stderr
    )


def test_torchrun_ranks_publish_the_cache_one_process_makes(s3, glue, tmp_path):
    args = ["extract", "--task", "sst2", "--data-dir", str(glue), "--split", "validation", "--limit", "60"]
    args += ["--shard-mb", "0.2", "--layers", "-1", "--storage-option", f"endpoint_url={s3}"]
    env = {**os.environ, **CREDENTIALS, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [*CLI, *args, "--cache-dir", "s3://caches/one"],
        capture_output=True,
        text=True,
        env={**env, "YTUNE_CACHE": str(tmp_path / "one")},
    )
    assert one.returncode == 0, one.stderr
    # Each rank stages in its own folder, as ranks on different machines would.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    cli = [str(free_port()), "-m", "ytune.cli", *args, "--cache-dir", "s3://caches/two", "--device", "cpu"]
    two = subprocess.run(
        [*torchrun, *cli], capture_output=True, text=True, env={**env, "YTUNE_CACHE": str(tmp_path / "two")}
    )
    assert two.returncode == 0, two.stderr[-3000:]
    cache_id = one.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert two.stdout.strip().splitlines()[-1] == f"s3://caches/two/{cache_id}"
    assert not (tmp_path / "two" / "staging").exists()  # every rank's staging copy goes once published
    fs = s3fs_of(s3)

    def objects(prefix: str) -> dict[str, bytes]:
        return {p.removeprefix(prefix): fs.cat_file(p) for p in fs.find(prefix)}

    assert objects(f"caches/two/{cache_id}") == objects(f"caches/one/{cache_id}")


def test_a_label_column_attached_to_a_store_cache_is_read_back_from_the_store(
    s3, published, tmp_path, monkeypatch
):
    url = str(published.path)
    texts = open_cache(url).texts("validation")[0]
    labels = tmp_path / "long.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("sentence", "long"), *((t, len(t.split()) > 12) for t in texts)])
    args = ["cache", "label", url, "--split", "validation", "--file", str(labels), "--name", "long"]
    out = run_cli(s3, *args, "--text-field", "sentence", "--label-field", "long")
    assert out.returncode == 0 and url in out.stdout, out.stderr
    monkeypatch.setenv("YTUNE_SHARD_CACHE", str(tmp_path / "elsewhere"))  # another machine: a fresh mirror
    column = open_cache(url).labels("validation", "long")
    assert [column.names[v] for v in column.values] == [str(len(t.split()) > 12) for t in texts]


def test_an_int8_cache_reads_from_the_store_as_from_local_disk(s3, encoder, glue, shard_cache, tmp_path):
    """8-bit features and their scales travel through the store like any other array."""
    data = load_glue("sst2", ["train"], glue, limit=60)
    cfg = ExtractConfig(layers=(-1,), dtype="int8", cache_dir=tmp_path / "local", progress=False)
    local = open_cache(extract(data, cfg, encoder=encoder).path).split("train")
    url = str(extract(data, replace(cfg, cache_dir="s3://caches/int8"), encoder=encoder).path)
    remote = open_cache(url).split("train")
    batches = [list(s.stream(16, seed=1, prefetch=0)) for s in (local, remote)]
    assert all(torch.equal(a.features, b.features) for a, b in zip(*batches, strict=True))
    assert batches[0][0].features.dtype == torch.float16

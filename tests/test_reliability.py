"""Reliability: faults, bad input and concurrency, tested.

A cache can take hours of GPU time to build: no kill, full disk, damaged file or second writer may
lose or silently corrupt it, and no user mistake may end in a traceback (one sentence, exit 2).

Most CLI calls run in this process through `ytune.cli.main` (an uncaught exception there is the
traceback a user would see; `ytune()` turns it into exit 1 with the traceback on stderr), with the
bundled MiniLM loaded once; real subprocesses are kept for what needs one: SIGKILL, two processes
at once, and the hub being unreachable. Kill points are reached deterministically by
tests/reliability_job.py, which forks cache writers that SIGKILL themselves at a chosen moment.
"""

import contextlib
import errno
import gc
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ytune import ExtractConfig, HeadSpec, TrainConfig, UserError, cli, extract, load_glue, open_cache, train
from ytune.cache import manifest as manifest_module
from ytune.cache import store
from ytune.cache.backends import get_backend
from ytune.cache.format import FORMAT_VERSION, LOCK, MANIFEST_LOCK, TMP_PREFIX
from ytune.cache.writer import CacheWriter, plan_shards
from ytune.extract import pipeline
from ytune.extract.encoder import load_encoder

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import cache_job  # noqa: E402
from conftest import GLUE  # noqa: E402  ($YTUNE_GLUE_DIR, else the shared data)
from killed_job import kill_when  # noqa: E402

pytestmark = pytest.mark.reliability

JOB = HERE / "reliability_job.py"
CLI = [sys.executable, "-m", "ytune.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
BACKENDS = ["zarr", "hdf5"]
SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
TOY_SHARD_BYTES = 90_000  # the toy cache (tests/cache_job.py) in about a dozen shards
TOY_SHARDS = len(
    plan_shards(cache_job.lengths(), 2 * len(cache_job.LAYERS) * cache_job.HIDDEN, TOY_SHARD_BYTES)
)


# --------------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Run:
    code: int
    out: str
    err: str


def extract_four_rows(glue, *argv) -> Run:
    """`ytune extract` of SST-2's first four validation rows, with more flags."""
    return ytune(
        "extract", "--task", "sst2", "--data-dir", glue, "--split", "validation", "--limit", "4", *argv
    )


def ytune(*argv) -> Run:
    """`ytune ARGV` in this process: exit code, stdout, stderr. An exception that escapes main is
    what a user would see as a traceback: it is printed to the captured stderr and gives code 1."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
        except Exception:
            traceback.print_exc()
            code = 1
    gc.collect()  # as a process exit would: drop what a failed run left open (its writer lock)
    return Run(code, out.getvalue(), err.getvalue())


def error_line(run: Run | subprocess.CompletedProcess, *words: str) -> str:
    """The one `ytune: error:` line of a run that must fail as a user mistake: exit 2, no traceback."""
    code = run.code if isinstance(run, Run) else run.returncode
    err = run.err if isinstance(run, Run) else run.stderr
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ytune: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def cache_files(path: Path) -> dict[str, bytes]:
    """Every byte of a cache but its lock files, by relative name."""
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(Path(path).rglob("*"))
        if f.is_file() and f.name not in (LOCK, MANIFEST_LOCK)
    }


def temporaries(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob(f"{TMP_PREFIX}*"))


def edit_manifest(path: Path, change) -> None:
    file = path / "manifest.json"
    doc = json.loads(file.read_text())
    change(doc)
    file.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def shard_path(path: Path, split: str, index: int, backend: str) -> Path:
    return path / split / f"shard-{index:05d}{SUFFIX[backend]}"


def damage(path: Path, split: str, index: int, backend: str, how: str) -> None:
    """Damage one shard of a cache the way disks and people do."""
    shard = shard_path(path, split, index, backend)
    name = f"shard-{index:05d}"
    data = (
        max((f for f in shard.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        if shard.is_dir()
        else shard
    )
    if how == "flipped":  # same size: only a checksum sees it
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif how == "truncated":
        data.write_bytes(data.read_bytes()[:-100])
    elif how == "deleted" and shard.is_dir():
        shutil.rmtree(shard)
    elif how == "deleted":
        shard.unlink()
    elif how == "metadata-flipped":  # zarr.json of the group: same size, unreadable
        meta = shard / "zarr.json"
        raw = bytearray(meta.read_bytes())
        raw[5] ^= 0xFF
        meta.write_bytes(bytes(raw))
    elif how == "manifest-checksum":
        edit_manifest(path, lambda m: m["splits"][split]["shards"][name].update(checksum="0" * 64))
    elif how == "manifest-entry-removed":
        edit_manifest(path, lambda m: m["splits"][split]["shards"].pop(name))
    else:
        raise AssertionError(how)


def extract_args(root: Path, backend: str = "zarr", *extra) -> list:
    """A small real extraction: 40 rows of SST-2 validation, last layer, about 8 shards."""
    return [
        "extract",
        "--task",
        "sst2",
        "--data-dir",
        GLUE,
        "--split",
        "validation",
        "--limit",
        "40",
        "--shard-mb",
        "0.1",
        "--layers",
        "-1",
        "--backend",
        backend,
        "--cache-dir",
        root,
        *extra,
    ]


def only_path(root: Path) -> Path:
    (path,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return path


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def minilm(glue):
    """The bundled encoder, loaded once; torch on one thread (what the subprocesses use too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoder(None, "cpu")
    torch.set_num_threads(threads)


@contextlib.contextmanager
def bundled(encoder):
    """`ytune extract` and `ytune predict` in this process use the already loaded encoder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_encoder", lambda *a, **k: encoder)
        mp.setattr("ytune.predict.load_encoder", lambda *a, **k: encoder, raising=False)
        yield mp


@pytest.fixture
def fast(minilm):
    with bundled(minilm) as mp:
        yield mp


@pytest.fixture(scope="module")
def references(minilm, tmp_path_factory):
    """Uninterrupted real extractions, one per backend, built on first use."""
    made: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in made:
            root = tmp_path_factory.mktemp(f"ref-{backend}")
            with bundled(minilm):
                run = ytune(*extract_args(root, backend))
            assert run.code == 0, run.err
            made[backend] = Path(run.out.strip().splitlines()[-1])
        return made[backend]

    return get


@pytest.fixture(scope="module")
def toy_originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return {
        b: Path(cache_job.run(str(root / b), b, "float16", shard_bytes=TOY_SHARD_BYTES)) for b in BACKENDS
    }


@pytest.fixture
def toy(toy_originals, tmp_path):
    """A fresh copy of the toy cache (one split, train, with the label column parity)."""

    def copy(backend: str = "zarr") -> Path:
        source = toy_originals[backend]
        target = tmp_path / f"caches-{backend}" / source.name
        shutil.copytree(source, target)
        return target

    return copy


def train_args(cache: Path, out: Path) -> list:
    return [
        "train",
        "--cache",
        cache,
        "--eval-split",
        "train",
        "--epochs",
        "1",
        "--head-type",
        "probe",
        "--batch-size",
        "64",
        "--out",
        out,
    ]


@pytest.fixture(scope="module")
def toy_head(toy_originals, tmp_path_factory):
    """A probe trained on the toy cache (zarr)."""
    out = tmp_path_factory.mktemp("head")
    config = TrainConfig(epochs=1, batch_size=64, eval_split="train")
    train(
        toy_originals["zarr"],
        [HeadSpec("probe", config={"head_type": "probe"})],
        config,
        out,
    )
    return out / "probe"


# --------------------------------------------------------------------------------------------------
# Faults 1: SIGKILL at many moments, then resume


KILL_POINTS = [
    *(
        f"shard:{i}:{when}"
        for i in (0, 1, TOY_SHARDS // 2, TOY_SHARDS - 1)
        for when in ("before", "mid", "after-rename")
    ),
    # manifest replaces: 1 creates the cache, 2 records the plan, 3.. commit shards, the last the labels
    *(f"manifest:{n}:before" for n in (1, 2, 3, TOY_SHARDS // 2 + 3, TOY_SHARDS + 2, TOY_SHARDS + 3)),
    *(f"manifest:{n}:after" for n in (2, 3, TOY_SHARDS + 2)),
    "labels:before",
    "labels:after",
]


@pytest.fixture(scope="module")
def kill_matrix(tmp_path_factory):
    """Every kill point, per backend, run by tests/reliability_job.py (both backends at once)."""
    root = tmp_path_factory.mktemp("kills")
    jobs = {
        b: subprocess.Popen(
            [
                sys.executable,
                str(JOB),
                str(root / f"{b}.json"),
                str(root / b),
                b,
                str(TOY_SHARD_BYTES),
                *KILL_POINTS,
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in BACKENDS
    }
    results = {}
    for backend, job in jobs.items():
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        results[backend] = json.loads((root / f"{backend}.json").read_text())
        assert results[backend]["ref"] == 0, err[-3000:]
        results[backend]["ref"] = root / backend / "ref" / cache_job.identity("float16").cache_id()
    return results


def test_the_writer_really_died_at_20_distinct_points(kill_matrix):
    killed = {
        (backend, point)
        for backend, results in kill_matrix.items()
        for point, r in results.items()
        if point != "ref" and r["killed"] == -signal.SIGKILL
    }
    assert len(killed) >= 20 and TOY_SHARDS >= 8


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_killed_at_any_point_resumes_bit_identical(kill_matrix, backend, point):
    result = kill_matrix[backend][point]
    assert result["killed"] == -signal.SIGKILL  # it really died there, by SIGKILL
    # What the kill left is a valid cache: committed shards intact, at most an incomplete split
    # (killed while the very first manifest was being written: no cache yet, nothing to lose).
    if result["manifest"]:
        assert all("not in the manifest" in p for p in result["problems"]), result["problems"]
    else:
        assert point == "manifest:1:before"
    assert result["resumed"] == 0
    path = Path(result["dir"]) / cache_job.identity("float16").cache_id()
    assert cache_files(path) == cache_files(kill_matrix[backend]["ref"])
    assert store.verify(path) == []
    assert temporaries(path) == []


def test_a_real_extract_killed_twice_at_timed_points_resumes_bit_identical(tmp_path, references, fast):
    """Real `ytune extract` processes, SIGKILLed once right after the plan is recorded and once
    after some shards; the third run finishes, bit-identical to an uninterrupted extraction."""
    reference = references("zarr")
    root = tmp_path / "job"
    manifest = root / reference.name / "manifest.json"

    def committed() -> tuple[int, int] | None:
        try:
            split = json.loads(manifest.read_text())["splits"]["validation"]
        except (OSError, ValueError, KeyError):
            return None
        return len(split["shards"]), split["num_shards"]

    def at_least(shards: int) -> Callable[[], bool]:
        return lambda: (committed() or (-1, 0))[0] >= shards

    for enough in (0, 3):
        job = kill_when([*CLI, *extract_args(root)], at_least(enough), env=ENV)
        assert job.returncode == -signal.SIGKILL
        done, planned = committed()
        assert enough <= done < planned  # killed part way
        problems = store.verify(manifest.parent)
        assert len(problems) == planned - done and all("not in the manifest" in p for p in problems), problems
    run = ytune(*extract_args(root))
    assert run.code == 0, run.err
    assert cache_files(manifest.parent) == cache_files(reference)
    assert store.verify(manifest.parent) == [] and temporaries(manifest.parent) == []


# --------------------------------------------------------------------------------------------------
# Faults 2: a full disk


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullFile:
    """A file on a disk that fills up: the first bytes land, then ENOSPC."""

    def __init__(self, f, where: str) -> None:
        self.f, self.where = f, where

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, text: str) -> int:
        if self.where == "labels" or text.count('"shard-') == 3:
            self.f.write(text[:99])
            raise no_space()
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def fill_the_disk(mp: pytest.MonkeyPatch, where: str, backend: str) -> None:
    """Make the next extraction run out of space at `where`, having written part of its file."""
    if where == "shard":  # the third shard's first batch is written, then the disk is full
        cls = type(get_backend(backend))
        real = cls.create

        def create(self, path, shape, dtype, offsets, row, attrs, checksums):
            sink = real(self, path, shape, dtype, offsets, row, attrs, checksums)
            if attrs["shard"] == "shard-00002":
                real_append = sink.append

                def append(block):
                    real_append(block)
                    raise no_space()

                sink.append = append
            return sink

        mp.setattr(cls, "create", create)
    elif where in ("manifest", "labels"):  # the file's first bytes are written, then the disk is full
        # manifest: the update that commits the third shard; labels: the first label file.
        module = manifest_module  # both are written through manifest.write_durably

        def full_open(file, mode="r", *args, **kwargs):
            f = open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller, who closes it)
            name = Path(file).name if where == "manifest" else Path(file).parent.name
            hit = name.startswith(f"{TMP_PREFIX}manifest.json") if where == "manifest" else name == "labels"
            return _FullFile(f, where) if hit and "w" in mode else f

        mp.setattr(module, "open", full_open, raising=False)
    else:
        raise AssertionError(where)


FULL_DISK = {
    "shard-zarr": ("shard", "zarr"),
    "shard-hdf5": ("shard", "hdf5"),
    "manifest": ("manifest", "zarr"),
    "labels": ("labels", "zarr"),
}


@pytest.fixture(scope="module")
def full_disk_runs(minilm, references, tmp_path_factory):
    """Per point: the run that hit the full disk, what it left, and the rerun without the fault."""
    made = {}

    def get(point: str) -> dict:
        if point not in made:
            where, backend = FULL_DISK[point]
            root = tmp_path_factory.mktemp(f"full-{point}")
            path = root / references(backend).name
            with bundled(minilm) as mp:
                fill_the_disk(mp, where, backend)
                failed = ytune(*extract_args(root, backend))
            left = store.verify(path)
            tmp = temporaries(path)
            with bundled(minilm):
                again = ytune(*extract_args(root, backend))
            made[point] = {
                "failed": failed,
                "left": left,
                "tmp": tmp,
                "again": again,
                "path": path,
                "reference": references(backend),
            }
        return made[point]

    return get


@pytest.mark.parametrize("point", FULL_DISK)
def test_a_full_disk_loses_nothing_and_the_rerun_completes(full_disk_runs, point):
    r = full_disk_runs(point)
    assert r["failed"].code != 0
    # What the manifest lists is intact: verify names only the shards not written yet, nothing damaged.
    assert r["left"] and all("not in the manifest" in p for p in r["left"]), r["left"]
    if point.startswith("shard"):
        assert r["tmp"] == []  # the half-written shard was removed at once
    assert r["again"].code == 0, r["again"].err
    assert cache_files(r["path"]) == cache_files(r["reference"])
    assert store.verify(r["path"]) == [] and temporaries(r["path"]) == []


@pytest.mark.parametrize(
    "point",
    [
        "shard-zarr",
        "shard-hdf5",
        "manifest",
        "labels",
    ],
)
def test_a_full_disk_is_one_sentence_saying_so(full_disk_runs, point):
    error_line(full_disk_runs(point)["failed"], "disk", "full")


# --------------------------------------------------------------------------------------------------
# Faults 3: a shard damaged on disk, or its manifest entry edited


VERIFY_DAMAGE = [
    *((b, how) for b in BACKENDS for how in ("flipped", "truncated", "deleted")),
    ("zarr", "manifest-checksum"),
    ("zarr", "manifest-entry-removed"),
]


@pytest.mark.parametrize(("backend", "how"), VERIFY_DAMAGE)
def test_cache_verify_exits_2_naming_the_damaged_shard(toy, backend, how):
    path = toy(backend)
    damage(path, "train", 2, backend, how)
    run = ytune("cache", "verify", path)
    error_line(run, "failed verification", "1 problem")
    assert [line for line in run.out.splitlines() if "shard-00002" in line], run.out


def test_cache_verify_names_a_damaged_label_or_text_file(toy):
    path = toy()
    label = path / "train" / "labels" / "parity.json"
    doc = json.loads(label.read_text())
    doc["values"][0] = 1 - doc["values"][0]  # one label changed, same size
    label.write_text(json.dumps(doc, separators=(",", ":")))
    texts = path / "train" / "texts.json"
    texts.write_text(texts.read_text().replace("row", "raw", 1))
    run = ytune("cache", "verify", path)
    error_line(run, "failed verification", "2 problem")
    assert "train/labels/parity.json: checksum mismatch" in run.out
    assert "train/texts.json: checksum mismatch" in run.out


@pytest.mark.parametrize(
    ("backend", "how", "words"),
    [
        ("zarr", "truncated", ["shard-00002", "missing or damaged"]),
        ("hdf5", "truncated", ["shard-00002", "missing or damaged"]),
        ("zarr", "deleted", ["shard-00002", "missing or damaged"]),
        ("hdf5", "deleted", ["shard-00002", "missing or damaged"]),
        ("zarr", "metadata-flipped", ["shard-00002", "cannot be read"]),
        ("zarr", "manifest-entry-removed", ["incomplete", "extract"]),
    ],
)
def test_train_on_a_damaged_cache_refuses_in_one_sentence(toy, tmp_path, backend, how, words):
    path = toy(backend)
    damage(path, "train", 2, backend, how)
    error_line(ytune(*train_args(path, tmp_path / "out")), *words)


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_train_with_a_damaged_label_file_refuses_in_one_sentence(toy, tmp_path, how):
    path = toy()
    label = path / "train" / "labels" / "parity.json"
    if how == "truncated":
        label.write_text(label.read_text()[:50])
    else:
        label.unlink()
    error_line(ytune(*train_args(path, tmp_path / "out")), "parity")


@pytest.mark.parametrize(
    "how",
    [
        "flipped",
        "truncated",
        "deleted",
        "manifest-entry-removed",
    ],
)
def test_rerunning_extract_rebuilds_just_the_damaged_shard(tmp_path, references, fast, how):
    reference = references("zarr")
    path = tmp_path / "c" / reference.name
    shutil.copytree(reference, path)
    damage(path, "validation", 2, "zarr", how)
    others = {
        f: f.stat().st_mtime_ns for f in path.glob("validation/shard-*/**/*") if "shard-00002" not in str(f)
    }
    if how == "flipped":  # same size: only a checksum finds it, and verify --drop hands it to extract
        dropped = ytune("cache", "verify", "--drop", path)
        error_line(dropped, "failed verification", "rerun the extraction")
    run = ytune(*extract_args(tmp_path / "c"))
    assert run.code == 0, run.err
    assert store.verify(path) == []
    assert cache_files(path) == cache_files(reference)
    assert {f: f.stat().st_mtime_ns for f in others} == others  # the sound shards were not rewritten


MALFORMED = {
    "truncated-json": lambda p: (p / "manifest.json").write_text((p / "manifest.json").read_text()[:120]),
    "no-splits": lambda p: edit_manifest(p, lambda m: m.pop("splits")),
    "shard-without-checksum": lambda p: edit_manifest(
        p, lambda m: m["splits"]["train"]["shards"]["shard-00001"].pop("checksum")
    ),
    "version-not-a-number": lambda p: edit_manifest(p, lambda m: m.update(format_version="2")),
}


@pytest.mark.parametrize("verb", ["info", "verify", "train"])
@pytest.mark.parametrize(
    "edit",
    [
        "truncated-json",
        *(e for e in ("no-splits", "shard-without-checksum", "version-not-a-number")),
    ],
)
def test_a_malformed_manifest_is_one_sentence(toy, tmp_path, edit, verb):
    path = toy()
    MALFORMED[edit](path)
    before = cache_files(path)
    run = ytune(*train_args(path, tmp_path / "out")) if verb == "train" else ytune("cache", verb, path)
    error_line(run, "manifest")
    assert cache_files(path) == before


# --------------------------------------------------------------------------------------------------
# Faults 4: two writers at once


def test_a_second_extract_on_the_same_cache_is_refused_and_the_first_ends_correct(tmp_path, references, fast):
    """The first extraction is held (in this process) after its first shard; a second `ytune
    extract` process with the same arguments must refuse, change nothing, and the first then
    finishes a cache identical to an uninterrupted one."""
    reference = references("zarr")
    root = tmp_path / "c"
    path = root / reference.name
    reached, go, first = threading.Event(), threading.Event(), {}
    real_open = CacheWriter.open_shard

    def held(self, split, shard, hidden):
        if shard.index == 1:
            reached.set()
            go.wait(180)
        return real_open(self, split, shard, hidden)

    fast.setattr(CacheWriter, "open_shard", held)
    thread = threading.Thread(target=lambda: first.update(run=ytune(*extract_args(root))))
    thread.start()
    try:
        assert reached.wait(120), "the first extraction never reached its second shard"
        before = cache_files(path)
        second = subprocess.run(
            [*CLI, *extract_args(root)], env=ENV, capture_output=True, text=True, timeout=180
        )
        after = cache_files(path)
    finally:
        go.set()
        thread.join(180)
    error_line(second, "being written", f"pid {os.getpid()}")
    assert after == before  # the refused process touched nothing
    assert first["run"].code == 0, first["run"].err
    assert cache_files(path) == cache_files(reference)
    assert store.verify(path) == []


def test_a_refused_writer_lets_go_of_the_lock(toy):
    path = toy()
    identity = cache_job.identity("float16")
    with pytest.raises(UserError, match="zarr backend") as refused:
        CacheWriter(path.parent, identity, "hdf5")
    # the error is kept alive (as a notebook keeps its last one), its traceback and all: the lock is free
    CacheWriter(path.parent, identity, "zarr").close()
    assert "--backend zarr" in str(refused.value)


def test_an_extraction_refused_at_planning_lets_go_of_the_lock(tmp_path, minilm, glue):
    data = load_glue("sst2", ["validation"], glue, limit=12)
    cfg = ExtractConfig(layers=(-1,), cache_dir=tmp_path, shard_bytes=20_000)
    extract(data, cfg, encoder=minilm)
    with pytest.raises(UserError, match="another shard size") as refused:
        extract(data, ExtractConfig(layers=(-1,), cache_dir=tmp_path, shard_bytes=40_000), encoder=minilm)
    assert extract(data, cfg, encoder=minilm).skipped_shards > 0  # while the error, kept, holds its frames
    assert "shard" in str(refused.value)


# --------------------------------------------------------------------------------------------------
# Bad input: one sentence, exit 2, and no cache written


def write_file(folder: Path, name: str, content) -> Path:
    path = folder / name
    if name.endswith(".parquet") and isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD = "text,label\na fine film,good\na dull film,bad\n"
BAD_DATA = {
    # id: (files {split: (name, content)}, extra args, words the message must hold)
    "empty-csv": ({"train": ("e.csv", "")}, [], ["e.csv", "no rows"]),
    "header-only-tsv": ({"train": ("h.tsv", "text\tlabel\n")}, [], ["h.tsv", "no rows"]),
    "empty-json-list": ({"train": ("e.json", "[]")}, [], ["e.json", "no rows"]),
    "empty-jsonl": ({"train": ("e.jsonl", "\n\n")}, [], ["e.jsonl", "no rows"]),
    "empty-parquet": (
        {"train": ("e.parquet", {"text": pa.array([], pa.string()), "label": pa.array([], pa.string())})},
        [],
        ["e.parquet", "no rows"],
    ),
    "missing-text-column": (
        {"train": ("t.csv", GOOD)},
        ["--text-field", "sentence"],
        ["text column 'sentence'", "text, label"],
    ),
    "missing-label-column": ({"train": ("t.csv", GOOD)}, ["--label-field", "y"], ["label column 'y'"]),
    "empty-text": ({"train": ("t.csv", 'text,label\nok,a\n"",b\n')}, [], ["row 2", "empty text", "'text'"]),
    "whitespace-text": ({"train": ("t.csv", 'text,label\nok,a\n"  \t ",b\n')}, [], ["row 2", "empty text"]),
    "whitespace-text-json": (
        {"train": ("t.json", json.dumps([{"text": "ok", "label": "a"}, {"text": "\n ", "label": "b"}]))},
        [],
        ["row 2", "empty text"],
    ),
    "empty-pair": (
        {"train": ("t.csv", 'text,pair,label\nok,fine,a\nok," ",b\n')},
        ["--text-pair-field", "pair"],
        ["row 2", "empty text", "'pair'"],
    ),
    "validation-label-not-in-train": (
        {"train": ("t.csv", GOOD), "validation": ("v.csv", "text,label\nok,good\nhm,awful\n")},
        [],
        ["'awful'", "validation", "bad, good"],
    ),
    "nan-target-csv": ({"train": ("r.csv", "text,label\na,1.5\nb,nan\n")}, [], ["row 2", "nan"]),
    "nan-target-json": (
        {"train": ("r.json", '[{"text": "a", "label": 1.5}, {"text": "b", "label": NaN}]')},
        [],
        ["row 2", "no label"],
    ),
    "infinite-target": ({"train": ("r.csv", "text,label\na,1.5\nb,-inf\n")}, [], ["row 2", "infinite"]),
    "binary-named-parquet": ({"train": ("j.parquet", bytes(range(256)) * 4)}, [], ["j.parquet", "parquet"]),
    "csv-named-json": ({"train": ("c.json", GOOD)}, [], ["c.json", "json"]),
    "binary-named-csv": ({"train": ("b.csv", bytes(range(256)) * 4)}, [], ["b.csv", "csv"]),
    "parquet-named-csv": ({"train": ("p.csv", None)}, [], ["p.csv", "csv"]),
    "no-extension": ({"train": ("data", GOOD)}, [], ["extension"]),
    "missing-file": ({"train": ("nope.csv", None)}, [], ["nope.csv", "does not exist"]),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_files_are_one_sentence_and_write_no_cache(tmp_path, fast, case):
    files, extra, words = BAD_DATA[case]
    args = []
    for split, (name, content) in files.items():
        if case == "parquet-named-csv":
            pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), tmp_path / name)
        elif content is not None:
            write_file(tmp_path, name, content)
        args += ["--data", f"{split}={tmp_path / name}"]
    if "--text-field" not in extra:
        extra = ["--text-field", "text", *extra]
    if "--label-field" not in extra:
        extra = [*extra, "--label-field", "label"]
    split = ["--split", ",".join(files)]
    run = ytune("extract", *args, *extra, *split, "--task", "mine", "--cache-dir", tmp_path / "cache")
    error_line(run, *words)
    assert not (tmp_path / "cache").exists()


BAD_TASK = {
    "unknown-glue-task": (["--task", "sst3"], ["unknown glue task 'sst3'", "sst2"]),
    "unknown-glue-split": (["--task", "sst2", "--split", "dev"], ["split 'dev'", "validation"]),
    "no-dataset-named": ([], ["name a dataset"]),
    "data-without-text-field": (["--data", "x.csv"], ["--text-field"]),
    "limit-zero": (["--task", "sst2", "--limit", "0"], ["limit", "positive"]),
}


@pytest.mark.parametrize("case", BAD_TASK)
def test_bad_dataset_names_are_one_sentence_and_write_no_cache(tmp_path, fast, glue, case):
    args, words = BAD_TASK[case]
    if "--task" in args and "--data-dir" not in args:
        args = [*args, "--data-dir", glue]
    run = ytune("extract", *args, "--cache-dir", tmp_path / "cache")
    error_line(run, *words)
    assert not (tmp_path / "cache").exists()


def test_texts_longer_than_max_length_are_truncated_and_counted(tmp_path, fast):
    long = " ".join(["a remarkably long and winding review"] * 12)
    data = write_file(tmp_path, "t.csv", f"text,label\n{long},good\nshort,bad\n{long} again,good\n")
    run = ytune(
        "extract",
        "--data",
        data,
        "--text-field",
        "text",
        "--label-field",
        "label",
        "--max-length",
        "16",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert run.code == 0, run.err
    summary, path = run.out.strip().splitlines()[-2:]
    assert "2 rows truncated" in summary
    assert json.loads((Path(path) / "manifest.json").read_text())["splits"]["train"]["truncated"] == 2
    split = open_cache(path).split("train")
    assert [split[i].features.shape[0] for i in range(3)] == [16, 3, 16]
    # No --layers: the middle third of MiniLM's depth, which the heads' defaults were measured on.
    assert split.cache.identity.layers == (2, 3, 4) and split[0].features.shape[1] == 3


def test_a_max_length_beyond_the_encoder_is_one_sentence_and_writes_no_cache(tmp_path, fast):
    data = write_file(tmp_path, "t.csv", "text\n" + "word " * 700 + "\nshort\n")
    run = ytune(
        "extract",
        "--data",
        data,
        "--text-field",
        "text",
        "--max-length",
        "1000",
        "--cache-dir",
        tmp_path / "cache",
    )
    error_line(run, "max-length", "512")
    assert not (tmp_path / "cache").exists()


def test_a_max_length_too_short_for_the_special_tokens_is_refused(tmp_path, fast):
    data = write_file(tmp_path, "t.csv", "text\na short text\nanother one\n")
    run = ytune(
        "extract",
        "--data",
        data,
        "--text-field",
        "text",
        "--max-length",
        "1",
        "--cache-dir",
        tmp_path / "cache",
    )
    error_line(run, "max-length")
    assert not (tmp_path / "cache").exists()


def test_an_unknown_hub_model_is_one_sentence_in_a_real_process(tmp_path, glue):
    run = subprocess.run(
        [
            *CLI,
            "extract",
            "--task",
            "sst2",
            "--data-dir",
            glue,
            "--split",
            "validation",
            "--limit",
            "4",
            "--model",
            "no-such-org/no-such-encoder",
            "--cache-dir",
            tmp_path / "cache",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    error_line(run, "cannot load encoder", "no-such-org/no-such-encoder")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "model", ["empty-folder", "broken-config", "a-file"]
)  # missing: tests/test_extract.py
def test_a_bad_model_folder_is_one_sentence_and_writes_no_cache(tmp_path, glue, minilm, model):
    folder = tmp_path / model
    if model == "empty-folder":
        folder.mkdir()
    elif model == "broken-config":
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "bert", ')
    elif model == "a-file":
        folder.write_text("not a model")
    run = extract_four_rows(
        glue,
        "--model",
        folder,
        "--cache-dir",
        tmp_path / "cache",
    )
    error_line(run, "cannot load encoder", model)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("layers", "words"),
    [("7", ["layer 7", "0..6"]), ("-8", ["layer -8", "-7..-1"]), ("", ["names no layer"])],
)
def test_layers_out_of_range_are_one_sentence_and_write_no_cache(tmp_path, fast, glue, layers, words):
    run = extract_four_rows(
        glue,
        f"--layers={layers}",
        "--cache-dir",
        tmp_path / "cache",
    )
    error_line(run, *words)
    assert not (tmp_path / "cache").exists()


def test_train_layers_not_in_the_cache_are_one_sentence(toy, tmp_path):
    path = toy()
    error_line(ytune(*train_args(path, tmp_path / "out"), "--layers", "2"), "layer 2", "[0, 3, 6]")
    assert not (tmp_path / "out").exists()


def test_an_unwritable_cache_dir_is_one_sentence(tmp_path, fast, glue):
    if (
        os.geteuid() == 0
    ):  # root writes through chmod: a path under a regular file cannot be created by anyone
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        cache_dir = blocker / "sub"
    else:
        blocker = tmp_path / "read-only"
        blocker.mkdir()
        blocker.chmod(0o500)
        cache_dir = blocker / "sub"
    try:
        run = extract_four_rows(
            glue,
            "--cache-dir",
            cache_dir,
        )
    finally:
        blocker.chmod(0o700)
    error_line(run, "cannot create the cache directory")
    assert blocker.is_file() or list(blocker.iterdir()) == []


@pytest.mark.parametrize("field", ["encoder", "tokenizer", "max_length"])
def test_a_head_from_another_feature_space_is_refused_by_eval(toy, toy_head, tmp_path, field):
    head = tmp_path / "head"
    shutil.copytree(toy_head, head)
    config = json.loads((head / "config.json").read_text())
    config["identity"][field] = 512 if field == "max_length" else "another-fingerprint"
    (head / "config.json").write_text(json.dumps(config))
    path = toy()
    before = cache_files(path)
    error_line(ytune("eval", "--head", head, "--cache", path, "--split", "train"), "other features", field)
    assert cache_files(path) == before


def test_a_head_from_another_feature_space_is_refused_by_predict(toy_head, fast):
    error_line(ytune("predict", "--head", toy_head, "a fine film"), "not the one the heads were trained on")


@pytest.mark.parametrize(
    "verb",
    ["info", "verify", "train", "ls"],
)
def test_a_newer_format_version_is_refused_and_left_unchanged(toy, toy_originals, tmp_path, verb):
    path = toy()
    shutil.copytree(
        toy_originals["hdf5"], path.parent / toy_originals["hdf5"].name.upper()
    )  # a sound neighbour
    edit_manifest(path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    before = cache_files(path)
    if verb == "ls":
        run = ytune("cache", "ls", "--cache-dir", path.parent)
        assert run.code == 0, run.err
        assert toy_originals["hdf5"].name.upper() in run.out
    else:
        run = ytune(*train_args(path, tmp_path / "out")) if verb == "train" else ytune("cache", verb, path)
        error_line(run, "newer ytune", "upgrade ytune")
    assert cache_files(path) == before


@pytest.mark.parametrize("target", ["empty-folder", "a-file", "missing"])
def test_train_on_a_path_that_is_not_a_cache_is_one_sentence(tmp_path, target):
    path = tmp_path / target
    if target == "empty-folder":
        path.mkdir()
    elif target == "a-file":
        path.write_text("hello")
    error_line(ytune("train", "--cache", path, "--out", tmp_path / "out"), "no ytune cache", target)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "target",
    [
        "empty-folder",
        "missing",
        "a-file",
        "config-not-an-object",
        "damaged-weights",
    ],
)
def test_eval_on_a_folder_that_is_not_a_head_is_one_sentence(toy, toy_head, tmp_path, target):
    head = tmp_path / target
    if target == "empty-folder":
        head.mkdir()
    elif target == "a-file":
        head.write_text("hello")
    elif target != "missing":
        shutil.copytree(toy_head, head)
        if target == "config-not-an-object":
            (head / "config.json").write_text("[]")
        else:
            weights = head / "head.safetensors"
            weights.write_bytes(weights.read_bytes()[:40])
    error_line(ytune("eval", "--head", head, "--cache", toy(), "--split", "train"), target)


@pytest.mark.parametrize("given", ["nothing", "empty-file", "blank-texts"])
def test_predict_with_no_texts_is_one_sentence(toy_head, tmp_path, given):
    args = []
    words = {
        "nothing": ["give texts"],
        "empty-file": ["no rows"],
        "blank-texts": ["Row 1 of ", "in.csv has an empty text"],
    }[given]
    if given != "nothing":
        content = "text\n" if given == "empty-file" else 'text\n"  "\n'
        args = ["--input", write_file(tmp_path, "in.csv", content)]
    run = ytune("predict", "--head", toy_head, *args)
    error_line(run, *words)
    assert "split" not in run.err  # one file: no split to name


def test_a_resumed_cache_reads_back_every_row_once(kill_matrix):
    """Beyond bytes: a resumed cache reads back every row exactly once (one backend, one point)."""
    result = kill_matrix["hdf5"]["shard:1:mid"]
    split = open_cache(Path(result["dir"]) / cache_job.identity("float16").cache_id()).split("train")
    lengths = cache_job.lengths()
    rows = sorted(r for b in split.stream(64, shuffle=False, prefetch=0) for r in b.rows.tolist())
    assert rows == list(range(cache_job.ROWS))
    assert np.array_equal([split[r].features.shape[0] for r in (0, 150, 299)], lengths[[0, 150, 299]])


def test_a_cache_dir_url_of_an_unknown_protocol_is_refused_before_extracting(
    tmp_path, fast, glue, monkeypatch
):
    monkeypatch.setenv("YTUNE_CACHE", str(tmp_path / "local"))  # where URL caches are staged
    run = extract_four_rows(
        glue,
        "--cache-dir",
        "nosuchproto://bucket/caches",
    )
    error_line(run, "nosuchproto")
    assert not (tmp_path / "local").exists()  # refused before any GPU time was spent

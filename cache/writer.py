"""Writing a cache: plan a split into shards, commit each shard atomically, attach labels.

This is the whole write path `extract/` uses. The rules that make a killed job safe to rerun:
a shard is written under a temporary name, checksummed, fsynced and renamed, and only then recorded
in the manifest, which is itself replaced atomically. On reopening, anything the manifest does not
list is rubbish from an interrupted run and is removed; the plan is deterministic, so the job
resumes at the first missing shard and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from ytune.cache.backends import ShardSink, get_backend
from ytune.cache.files import checksum, disk_error, fingerprint, is_whole, remove, size_on_disk, staged
from ytune.cache.format import (
    CHECKSUMS_SINCE,
    DEFAULT_SHARD_BYTES,
    MANIFEST,
    TEXTS,
    TMP_PREFIX,
    format_version,
    numpy_dtype,
    shard_name,
)
from ytune.cache.identity import Identity
from ytune.cache.manifest import (
    LabelRecord,
    Manifest,
    ShardRecord,
    SplitRecord,
    drop_shards,
    read_manifest,
    take_lock,
    update_manifest,
    write_durably,
    write_manifest,
)
from ytune.errors import UserError


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: which source rows, in stored order, and their token counts."""

    index: int
    rows: np.ndarray  # int64 source rows, ascending token length
    lengths: np.ndarray  # int64 tokens per row

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


def plan_shards(
    lengths: Sequence[int], bytes_per_token: int, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[ShardPlan]:
    """Cut a split's rows into shards of about `shard_bytes`, sorted by token length.

    Sorting makes every shard, and every batch cut from it, hold rows of similar length, so the
    encoder pads little; the stable sort and the greedy cut make the plan a pure function of the
    lengths, which is what lets an interrupted job resume.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise UserError("the split has no rows to extract.")
    order = np.argsort(lengths, kind="stable")
    budget = max(1, shard_bytes // max(1, bytes_per_token))
    cuts = (
        np.searchsorted(np.cumsum(lengths[order]), np.arange(budget, lengths.sum(), budget), side="left") + 1
    )
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < len(order))), len(order)]
    return [ShardPlan(i, order[a:b], lengths[order[a:b]]) for i, (a, b) in enumerate(pairwise(bounds))]


def plan_digest(plan: Sequence[ShardPlan]) -> str:
    return fingerprint(shard.rows.tobytes() + b"|" + shard.lengths.tobytes() + b";" for shard in plan)


class CacheWriter:
    """The write side of one cache, `root/<cache-id>`.

    `exclusive` takes the cache's writer lock (flock, released by the kernel even on SIGKILL), so a
    second job on the same cache is refused instead of interleaving shards. Ranks of one torchrun
    job share the lock of rank 0 and open with exclusive=False.
    """

    def __init__(
        self,
        root: str | Path,
        identity: Identity,
        backend: str = "zarr",
        info: dict | None = None,
        exclusive: bool = True,
    ) -> None:
        self.identity = identity
        self.backend = get_backend(backend)
        self.path = Path(root) / identity.cache_id()
        self.exclusive = exclusive
        self._lock = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the cache directory {self.path}: {e.strerror}.") from None
        if exclusive:
            self._lock = take_lock(self.path)
        try:
            self._open(info)
        except BaseException:
            self.close()  # a refused writer lets go of the lock at once
            raise

    def _open(self, info: dict | None) -> None:
        self.checksums = True  # a new cache is written in the current format
        if (self.path / MANIFEST).exists():
            manifest = read_manifest(self.path)
            self.checksums = manifest.format_version >= CHECKSUMS_SINCE  # a resumed cache stays one format
            if manifest.identity != self.identity:
                raise UserError(
                    f"{self.path} holds a cache with another identity (differs in: "
                    f"{', '.join(manifest.identity.diff(self.identity))})."
                )
            if manifest.backend != self.backend.name:
                raise UserError(
                    f"{self.path} was written with the {manifest.backend} backend; "
                    f"extract again with --backend {manifest.backend}."
                )
        elif self.exclusive:
            version = format_version(self.identity.dtype)
            write_manifest(self.path, Manifest(self.identity, self.backend.name, info or {}, {}, version))
        else:
            raise UserError(f"{self.path} has no manifest: the first rank must create the cache.")
        if self.exclusive:
            self._remove_uncommitted()

    def manifest(self) -> Manifest:
        return read_manifest(self.path)

    def plan_split(
        self,
        split: str,
        lengths: Sequence[int],
        text_fingerprint: str,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        truncated: int = 0,
        *,
        texts: tuple[Sequence[str], Sequence[str] | None],
    ) -> list[ShardPlan]:
        """Plan `split` and record it; a split already recorded must match text and plan.

        `texts` (the split's texts and second texts) are kept beside the features, so labels made
        later can be joined to the cached rows by text (`ytune cache label`) and errors can quote
        a row; they cost a few bytes per token next to kilobytes of features."""
        hidden_bytes = numpy_dtype(self.identity.dtype).itemsize * len(self.identity.layers)
        manifest = self.manifest()
        bytes_per_token = hidden_bytes * int(manifest.info.get("hidden_size", 1))
        plan = plan_shards(lengths, bytes_per_token, shard_bytes)
        digest = plan_digest(plan)
        # Checked before texts.json is written, so a refused split leaves the cached texts alone;
        # checked again under the manifest lock, where ranks of one job may race.
        self._check_replan(split, manifest.splits.get(split), text_fingerprint, digest)
        record = SplitRecord(
            rows=len(lengths),
            tokens=int(np.sum(lengths)),
            text_fingerprint=text_fingerprint,
            plan=digest,
            num_shards=len(plan),
            texts=self._write_texts(split, texts),
            truncated=truncated,
        )

        def add(manifest: Manifest) -> None:
            self._check_replan(split, manifest.splits.get(split), text_fingerprint, digest)
            manifest.splits.setdefault(split, record)

        update_manifest(self.path, add)
        return plan

    def _check_replan(self, split: str, old: SplitRecord | None, text_fingerprint: str, plan: str) -> None:
        """A split already recorded may be planned again (a resumed job) only from the same texts,
        cut into the same shards."""
        if old is None:
            return
        if old.text_fingerprint != text_fingerprint:
            raise UserError(
                f"split {split!r} of cache {self.path} was extracted from other texts; "
                "give the dataset another name or use another cache directory."
            )
        if old.plan != plan:
            raise UserError(
                f"split {split!r} of cache {self.path} was planned with another shard size; "
                f"rerun with the shard size it was started with."
            )

    def _write_texts(self, split: str, texts: tuple[Sequence[str], Sequence[str] | None]) -> str:
        (self.path / split).mkdir(exist_ok=True)
        doc = {"texts": list(texts[0]), "pairs": None if texts[1] is None else list(texts[1])}
        return _write_json(self.path / split / TEXTS, doc)

    def committed(self, split: str) -> set[str]:
        """Shards of `split` in the manifest and whole on disk. A listed shard that is missing or
        of the wrong size (truncated, deleted; `ytune cache verify --drop` also drops those with a
        bad checksum) is taken out of the manifest, so the job encodes it again."""
        record = self.manifest().splits.get(split)
        if record is None:
            return set()
        damaged = [
            name
            for name, shard in record.shards.items()
            if not is_whole(self._shard_path(split, name), shard.bytes)
        ]
        if damaged and self.exclusive:
            drop_shards(self.path, split, damaged)
        return set(record.shards) - set(damaged)

    def _shard_path(self, split: str, name: str) -> Path:
        return self.path / split / (name + self.backend.suffix)

    def write_shard(
        self, split: str, shard: ShardPlan, features: np.ndarray, scales: np.ndarray | None = None
    ) -> ShardRecord:
        """Write one planned shard whole (features [shard.tokens, layers, hidden] in the storage
        dtype, and an int8 cache's scales: format.encode gives both) and commit it. Extraction
        streams instead: open_shard, then append batch by batch."""
        writing = self.open_shard(split, shard, features.shape[2])
        writing.append(features, scales)
        return writing.commit()

    def open_shard(self, split: str, shard: ShardPlan, hidden: int) -> ShardWriting:
        """Start one planned shard under a temporary name; nothing is visible until `commit`."""
        stage = staged(self._shard_path(split, shard.name))
        attrs = {
            "dtype": self.identity.dtype,
            "layers": list(self.identity.layers),
            "split": split,
            "shard": shard.name,
            "cache_id": self.identity.cache_id(),
        }
        shape = (shard.tokens, len(self.identity.layers), hidden)
        dtype = numpy_dtype(self.identity.dtype)
        try:
            sink = self.backend.create(
                stage.tmp, shape, dtype, shard.offsets, shard.rows.astype(np.int64), attrs, self.checksums
            )
        except OSError as e:
            stage.abort()
            raise disk_error(e, self.path) from None
        return ShardWriting(self, split, shard, stage, sink, shape, dtype)

    def set_labels(
        self,
        split: str,
        column: str,
        values: Sequence[int | float | None],
        kind: str,
        names: Sequence[str] | None,
        metrics: Sequence[str],
        vectors: np.ndarray | None = None,
    ) -> None:
        """Attach a label column to a split (one value per source row, None where unknown). Labels
        live apart from features, so a new task over cached texts needs no extraction. `vectors`
        [labels, layers, hidden]: the encoder's features of each label's name, for heads that
        start their label queries there."""
        record = self.manifest().splits.get(split)
        if record is None:
            raise UserError(f"cache {self.path} has no split {split!r} to attach labels to.")
        if len(values) != record.rows:
            raise UserError(f"{len(values)} labels given for split {split!r}, which has {record.rows} rows.")
        label_dir = self.path / split / "labels"
        label_dir.mkdir(exist_ok=True)
        doc = {
            "column": column,
            "kind": kind,
            "names": list(names) if names else None,
            "values": list(values),
        }
        if vectors is not None:
            doc["vectors"] = np.asarray(vectors, dtype=np.float32).tolist()
        digest = _write_json(label_dir / f"{column}.json", doc)
        label = LabelRecord(kind=kind, names=doc["names"], metrics=list(metrics), checksum=digest)
        update_manifest(self.path, lambda m: m.splits[split].labels.__setitem__(column, label))

    def _remove_uncommitted(self) -> None:
        """Delete temporaries and shards the manifest does not list: what a killed run left."""
        manifest = self.manifest()
        for split_dir in (p for p in self.path.iterdir() if p.is_dir()):
            record = manifest.splits.get(split_dir.name)
            for item in [*split_dir.iterdir(), *(split_dir / "labels").glob(f"{TMP_PREFIX}*")]:
                listed = record is not None and item.name.removesuffix(self.backend.suffix) in record.shards
                if item.name.startswith(TMP_PREFIX) or (item.name.startswith("shard-") and not listed):
                    remove(item)
        for item in self.path.glob(f"{TMP_PREFIX}*"):
            remove(item)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardWriting:
    """A shard between open_shard and commit: its features arrive batch by batch, in stored order.

    Committing is the protocol of the module docstring: finish the files, checksum them, fsync and
    rename them to the final name (files.staged), then record the shard in the manifest. A failed
    append or commit removes the temporary files, so a full disk leaves nothing behind.
    """

    def __init__(
        self,
        writer: CacheWriter,
        split: str,
        shard: ShardPlan,
        stage: staged,
        sink: ShardSink,
        shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self.writer, self.split, self.shard, self.stage = writer, split, shard, stage
        self.sink, self.shape, self.dtype = sink, shape, dtype

    def append(self, features: np.ndarray, scales: np.ndarray | None = None) -> None:
        """The next tokens of the shard: [n, layers, hidden] in the storage dtype, and for int8
        their scales [n, layers, groups] (float16)."""
        quantized = self.dtype == np.int8
        if (
            features.shape[1:] != self.shape[1:]
            or features.dtype != self.dtype
            or (scales is not None) != quantized
            or (quantized and (scales.shape[:2] != features.shape[:2] or scales.dtype != np.float16))
        ):
            self.abort()
            raise ValueError(
                f"shard {self.shard.name}: features {features.shape} {features.dtype}"
                + (f", scales {scales.shape} {scales.dtype}" if scales is not None else "")
                + f", expected (n,) + {self.shape[1:]} {self.dtype}"
                + (" with float16 scales (n, layers, groups)" if quantized else "")
            )
        with self._guarded():
            self.sink.append(features, *([scales] if quantized else []))

    def commit(self) -> ShardRecord:
        tmp = self.stage.tmp
        with self._guarded():
            self.sink.close()
            record = ShardRecord(
                rows=len(self.shard.rows),
                tokens=self.shard.tokens,
                bytes=size_on_disk(tmp),
                checksum=checksum(tmp),
            )
            remove(self.stage.final)  # an uncommitted leftover of a killed run (the manifest never listed it)
            self.stage.commit()
        name, split = self.shard.name, self.split
        update_manifest(self.writer.path, lambda m: m.splits[split].shards.__setitem__(name, record))
        return record

    def abort(self) -> None:
        self.sink.release()
        self.stage.abort()

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Abort the shard when the block fails; a full disk becomes one sentence."""
        try:
            yield
        except OSError as e:
            self.abort()
            raise disk_error(e, self.writer.path) from None
        except BaseException:
            self.abort()
            raise


def _write_json(final: Path, doc: dict) -> str:
    """Write `doc` to `final` durably and atomically (ranks writing the same file race safely);
    its checksum."""
    return write_durably(final, json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":")))

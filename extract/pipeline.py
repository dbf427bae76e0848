"""Extraction: a dataset through the frozen encoder, once, into the cache.

The shape of the job: tokenize every split; plan each split into length-sorted shards (the cache's
plan); for every shard not yet committed, run the encoder over batches cut by a token budget, keep
only the real tokens of the requested layers in the storage dtype (on the GPU, gathered by indices
built on the host), copy them into reusable page-locked buffers on a side stream, and hand each
batch to a writer thread behind a bounded queue, which waits for its copy, checks it and appends it
to the open shard: the encoder waits for neither the copy nor the disk, and nothing on its path
waits for the GPU. A killed job rerun with the same arguments skips committed shards; under
torchrun each rank takes every WORLD_SIZE-th shard.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ytune.cache.format import default_root, fits, from_storage, refuse, to_storage
from ytune.cache.identity import Identity
from ytune.cache.manifest import read_manifest
from ytune.cache.store import check_url, publish, publish_url, remove_staging, staging_root
from ytune.cache.writer import CacheWriter, ShardPlan
from ytune.device import autocast as autocast_to
from ytune.device import batch_tokens, init_distributed, to_device
from ytune.errors import UserError
from ytune.extract.config import ExtractConfig
from ytune.extract.data import SplitData, TextDataset, text_fingerprint
from ytune.extract.encoder import Encoder, forward_layers, load_encoder, resolve_layers, truncate
from ytune.extract.hf import load_hf

TRUNCATION = "longest_first"
# A CPU batch under this many padded tokens runs on one thread: it gains nothing from a second one
# when the cores are free, and waits on every op for a core another job keeps busy (RESULTS.md 1).
SMALL_BATCH_TOKENS = 256
WRITE_AHEAD = 4  # batches queued for the writer thread; host memory holds at most this many plus two


@dataclass
class ExtractResult:
    path: Path | str  # a local folder, or the URL it was published to
    rows: int = 0  # encoded by this run (committed shards skipped)
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped_shards: int = 0
    truncated: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        cut = sum(self.truncated.values())
        return (
            f"extracted {self.rows} rows, {self.tokens} tokens, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({self.tokens / max(self.seconds, 1e-9):.0f} tokens/s); {self.skipped_shards} shards already cached; "
            f"{cut} rows truncated to max length"
        )


@dataclass
class Tokenized:
    ids: list[list[int]]
    type_ids: list[list[int]] | None
    lengths: np.ndarray
    truncated: int


def tokenize(tokenizer, split: SplitData, max_length: int) -> Tokenized:
    """Token ids per row, special tokens included, pairs cut `longest_first` as the tokenizer does.
    Rows are tokenized whole first, so the rows cut at max_length can be counted and reported."""
    args = (split.texts, split.pairs) if split.pairs is not None else (split.texts,)
    full = tokenizer(*args, truncation=False, verbose=False)
    long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    if long:
        cut_args = [[a[i] for i in long] for a in args]
        cut = tokenizer(*cut_args, truncation=TRUNCATION, max_length=max_length)
        for key in full:
            for j, i in enumerate(long):
                full[key][i] = cut[key][j]
    type_ids = full.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Tokenized(
        full["input_ids"], type_ids, np.array([len(x) for x in full["input_ids"]], dtype=np.int64), len(long)
    )


def batches(rows: np.ndarray, lengths: np.ndarray, batch_tokens: int) -> Iterator[np.ndarray]:
    """Consecutive runs of `rows` (sorted by their `lengths`, ascending) whose padded size fits the
    budget: the encoder's batches, for a shard being extracted or texts being predicted."""
    start = 0
    for end in range(1, len(rows) + 1):
        if end - start > 1 and (end - start) * lengths[end - 1] > batch_tokens:
            yield rows[start : end - 1]
            start = end - 1
    yield rows[start:]


def extract(
    dataset: Any,
    cfg: ExtractConfig,
    encoder: Encoder | None = None,
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str | None = "label",
) -> ExtractResult:
    """Encode every split of `dataset` into its cache (resuming a partial one); returns what was done.

    `dataset` is a TextDataset (load_glue, load_files, load_hf) or a `datasets` Dataset or
    DatasetDict, whose columns the field names pick."""
    if not isinstance(dataset, TextDataset):
        dataset = load_hf(dataset, text_field, text_pair_field, label_field)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    remote = str(cfg.cache_dir) if "://" in str(cfg.cache_dir or "") else None
    if remote:
        # The commit protocol needs rename and locks: stage on local disk, then publish. Each rank
        # stages and uploads its own shards (its machine may be another), rank 0 the manifest last.
        check_url(remote)
        cfg = replace(cfg, cache_dir=staging_root() / (f"rank-{rank}" if world > 1 else ""))
    start = time.perf_counter()
    if world > 1:
        cfg = replace(cfg, device=init_distributed(cfg.device))
    encoder = encoder or load_encoder(cfg.model, cfg.device, cfg.weights_dtype, cfg.attention)
    layers = resolve_layers(cfg.layers, encoder.num_layers)
    check_max_length(encoder, cfg.max_length)
    truncate(encoder.model, max(layers))
    identity = Identity(
        encoder.fingerprint,
        encoder.tokenizer_fingerprint,
        cfg.max_length,
        TRUNCATION,
        layers,
        cfg.dtype,
        dataset.name,
    )
    tokenized = {
        name: tokenize(encoder.tokenizer, split, cfg.max_length) for name, split in dataset.splits.items()
    }
    root = Path(cfg.cache_dir or default_root())

    if rank != 0:
        _barrier(world)  # rank 0 creates the cache and records the plans first
    exclusive = rank == 0 or remote is not None  # ranks staging for a store each own their folder
    writer = CacheWriter(root, identity, cfg.backend, info=encoder.info(), exclusive=exclusive)
    result = ExtractResult(writer.path, truncated={s: t.truncated for s, t in tokenized.items()})
    try:
        plans = _plan(writer, dataset, tokenized, cfg, encoder)
        if rank == 0:
            _barrier(world)
        todo = []
        for split, plan in plans.items():
            done = writer.committed(split)
            mine = [s for s in plan if s.index % world == rank]
            result.skipped_shards += sum(s.name in done for s in mine)
            todo += [(split, s) for s in mine if s.name not in done]
        _encode_shards(encoder, layers, cfg, writer, tokenized, todo, result)
    finally:
        _barrier(world)
        writer.close()
    if remote:
        staging = Path(result.path)
        result.path = _publish(staging, remote, rank, world)
        remove_staging(staging)  # only once published: a failed upload keeps it, so a rerun resumes
    result.seconds = time.perf_counter() - start
    return result


def check_max_length(encoder: Encoder, max_length: int) -> None:
    """Refused before anything is written: too short for the special tokens, or longer than the
    encoder's positions (transformers would fail mid-way)."""
    tok = encoder.tokenizer
    least = tok.num_special_tokens_to_add(pair=True) + 1
    most = (
        tok.model_max_length if tok.model_max_length < 1e6 else encoder.model.config.max_position_embeddings
    )
    if not least <= max_length <= most:
        raise UserError(
            f"--max-length {max_length} is out of range for {encoder.name}: use {least} to {most}."
        )


def _plan(
    writer: CacheWriter,
    dataset: TextDataset,
    tokenized: dict[str, Tokenized],
    cfg: ExtractConfig,
    encoder: Encoder,
) -> dict[str, list[ShardPlan]]:
    task, plans = dataset.task, {}
    vectors = (
        label_vectors(encoder, task.label_names, writer.identity)
        if task.label_names
        and writer.exclusive
        and any(s.labels is not None for s in dataset.splits.values())
        else None
    )
    for name, split in dataset.splits.items():
        tok = tokenized[name]
        plans[name] = writer.plan_split(
            name,
            tok.lengths,
            text_fingerprint(split),
            cfg.shard_bytes,
            tok.truncated,
            texts=(split.texts, split.pairs),
        )
        if split.labels is not None and writer.exclusive:
            writer.set_labels(
                name, task.name, split.labels, task.kind, task.label_names, task.metrics, vectors
            )
    return plans


def label_vectors(encoder: Encoder, names: Sequence[str], identity: Identity) -> np.ndarray:
    """[labels, layers, hidden]: each label name ("not_entailment" read as "not entailment") through
    the encoder, mean over its tokens, as the cache stores features (rounded to its dtype)."""
    texts = [n.replace("_", " ") for n in names]
    tok = tokenize(encoder.tokenizer, SplitData(texts, None, None), identity.max_length)
    hidden, mask = run_encoder(encoder, tok, np.arange(len(texts)), identity.layers)
    hidden = from_storage(*to_storage(hidden, identity.dtype, identity.layers), identity.dtype).float()
    m = mask[:, :, None, None].float()
    return ((hidden * m).sum(1) / m.sum(1)).cpu().numpy()


def _encode_shards(
    encoder: Encoder,
    layers: tuple[int, ...],
    cfg: ExtractConfig,
    writer: CacheWriter,
    tokenized: dict[str, Tokenized],
    todo: list[tuple[str, ShardPlan]],
    result: ExtractResult,
) -> None:
    device = encoder.device
    tokens = batch_tokens(device, cfg.batch_tokens)
    bar = tqdm(
        total=sum(s.tokens for _, s in todo),
        unit="tok",
        unit_scale=True,
        desc="extract",
        disable=not cfg.progress if cfg.progress is not None else None,
        file=sys.stderr,
    )
    host = HostCopies(device, slots=WRITE_AHEAD + 2)
    with _WriterThread(writer, encoder.hidden_size, layers, WRITE_AHEAD) as out:
        for split, shard in todo:
            tok = tokenized[split]
            out.start(split, shard)
            for rows in batches(shard.rows, shard.lengths, tokens):
                hidden, _ = run_encoder(encoder, tok, rows, layers, cfg.autocast)
                real = hidden.flatten(0, 1).index_select(0, to_device(real_tokens(tok.lengths[rows]), device))
                stored = to_storage(real, cfg.dtype, layers, checked=False)
                out.put(host.land([fits(real, cfg.dtype), *(t for t in stored if t is not None)]))
                bar.update(int(tok.lengths[rows].sum()))
                bar.set_postfix(
                    rows_s=f"{(result.rows + len(rows)) / max(bar.format_dict['elapsed'], 1e-9):.0f}"
                )
                result.rows += len(rows)
            result.tokens += shard.tokens
            out.commit()
        result.bytes += out.close()
    bar.close()


def real_tokens(lengths: np.ndarray) -> np.ndarray:
    """Positions of the real tokens in a batch padded to its longest row, flattened: built on the
    host from the lengths, so gathering them (unlike a boolean mask) never waits for the GPU."""
    positions = np.arange(int(lengths.max()))
    keep = positions[None, :] < lengths[:, None]
    return (np.arange(len(lengths))[:, None] * len(positions) + positions[None, :])[keep]


def run_encoder(
    encoder: Encoder, tok: Tokenized, rows: np.ndarray, layers: Sequence[int], mode: str = "bf16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One padded batch of `rows` through the encoder: hidden states [B, T, layers, H] and the
    mask [B, T] of real tokens. Extraction keeps hidden[mask]; prediction feeds both to heads."""
    device = encoder.device
    inputs, mask = pad(tok, rows, encoder.tokenizer.pad_token_id or 0, device)
    small = device.type == "cpu" and mask.numel() < SMALL_BATCH_TOKENS
    with torch.inference_mode(), autocast_to(device, mode), _one_thread() if small else nullcontext():
        return forward_layers(encoder.model, inputs, layers), mask


@contextmanager
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pad(tok: Tokenized, rows: np.ndarray, pad_id: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """The encoder's inputs for `rows`, padded to the longest, on `device`; and the bool mask."""
    longest = int(tok.lengths[rows].max())
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    types = np.zeros_like(ids) if tok.type_ids is not None else None
    for i, r in enumerate(rows):
        n = tok.lengths[r]
        ids[i, :n], mask[i, :n] = tok.ids[r], 1
        if types is not None:
            types[i, :n] = tok.type_ids[r]
    inputs = {"input_ids": to_device(ids, device), "attention_mask": to_device(mask, device)}
    if types is not None:
        inputs["token_type_ids"] = to_device(types, device)
    return inputs, inputs["attention_mask"].bool()


@dataclass
class Landed:
    """One batch's stored arrays on the host, valid once `wait` returns; `release` hands their
    page-locked buffers back for another batch."""

    arrays: list[torch.Tensor]
    event: torch.cuda.Event | None = None
    release: Callable[[], None] = lambda: None

    def wait(self) -> list[torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.arrays


class HostCopies:
    """Brings each batch's stored features from the GPU to the host without stalling the encoder:
    reusable page-locked buffers, filled on a side stream, an event per batch; the encoder goes
    on to its next batch at once, and only the writer thread waits for the copy. At most `slots`
    batches are in flight, so host memory stays bounded. On a CPU the tensors are on the host
    already and pass through."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self.cuda = device.type == "cuda"
        self.free: queue.Queue = queue.Queue()
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            for _ in range(slots):
                self.free.put({})  # buffers made at first use, grown if a batch needs more

    def land(self, tensors: list[torch.Tensor]) -> Landed:
        if not self.cuda:
            return Landed(tensors)
        slot = self.free.get()  # waits while `slots` batches are still being copied or written
        self.stream.wait_stream(torch.cuda.current_stream())
        arrays = []
        with torch.cuda.stream(self.stream):
            for i, t in enumerate(tensors):
                if i not in slot or slot[i].numel() < t.numel() or slot[i].dtype != t.dtype:
                    slot[i] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=True)
                arrays.append(slot[i][: t.numel()].view(t.shape))
                arrays[-1].copy_(t, non_blocking=True)
                t.record_stream(self.stream)  # its memory is not reused before the copy is done
            event = torch.cuda.Event()
            event.record(self.stream)
        return Landed(arrays, event, lambda: self.free.put(slot))


class _WriterThread:
    """Writes each batch's features into its open shard in the background, so the encoder never
    waits for the disk, and after a shard's last batch only its commit remains. A bounded queue of
    batches keeps memory small; an error in the thread (a full disk, say) is raised in the encoding
    loop at its next call."""

    def __init__(self, writer: CacheWriter, hidden: int, layers: Sequence[int], depth: int) -> None:
        self.writer, self.hidden, self.layers = writer, hidden, layers
        self.queue, self.error, self.bytes = queue.Queue(maxsize=depth), None, 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="ytune-writer")
        self.thread.start()

    def _run(self) -> None:
        shard = None
        while (item := self.queue.get()) is not None:
            kind, value = item
            try:
                if self.error is not None:
                    pass  # drained: the encoding loop raises the error at its next call
                elif kind == "start":
                    shard = self.writer.open_shard(*value, self.hidden)
                elif kind == "batch":
                    fitting, *stored = value.wait()
                    refuse(fitting, self.layers)  # here, so that the encoder never waits to know
                    shard.append(*(t.numpy() for t in stored))
                else:
                    self.bytes += shard.commit().bytes
                    shard = None
            except BaseException as e:  # raised again in the main thread
                self.error = e
            finally:
                if kind == "batch":  # its buffers back, written or not: the encoder never waits on them
                    value.release()
        if shard is not None:  # stopped mid-shard: nothing half-written stays behind
            shard.abort()

    def _put(self, item: tuple) -> None:
        self._raise()
        self.queue.put(item)

    def start(self, split: str, shard: ShardPlan) -> None:
        self._put(("start", (split, shard)))

    def put(self, landed: Landed) -> None:
        """One batch: which layers fit float16, the stored features (and an int8 cache's scales)."""
        self._put(("batch", landed))

    def commit(self) -> None:
        self._put(("commit", None))

    def close(self) -> int:
        self.queue.put(None)
        self.thread.join()
        self._raise()
        return self.bytes

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> _WriterThread:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def _publish(path: Path, url: str, rank: int, world: int) -> str:
    """Every rank uploads its own shards; rank 0 then publishes the manifest with all of them, so
    the store holds the cache one process would have made."""
    if world == 1:
        return publish(path, url)
    import torch.distributed as dist

    publish(path, url, shards_only=True)
    manifest = read_manifest(path)
    records = [None] * world
    dist.all_gather_object(records, {s: r.shards for s, r in manifest.splits.items()})  # after every upload
    for shards in records:
        for split, mine in shards.items():
            manifest.splits[split].shards.update(mine)
    return publish(path, url, manifest=manifest) if rank == 0 else publish_url(path, url)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()

"""A split loaded once, whole, where the heads train: its batches are gathered there from indices.

The stream (reader.py) reads every shard again each epoch and pads each batch in numpy, example by
example; on a GPU that leaves the GPU waiting (RESULTS.md 6). A resident split holds the packed
tokens of every shard (the requested layers, in the stored dtype: an int8 cache's take half the
memory and are widened batch by batch) on one device, and the order of each epoch comes from the
stream's own code (SplitReader.epoch_order) run on spans of those tokens, so a resident split gives
the very batches the stream gives, in the same order, at the same seed. A batch costs three small
index copies and one gather on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ytune.cache.format import from_storage
from ytune.cache.reader import Batch, LabelColumn, SplitReader, label_values, prefetched
from ytune.device import to_device

# (span of the example's tokens in the packed array, unused, source row): the stream's example
# shape, with a span (whose len is the example's length) in place of its features.
Span = tuple[range, None, int]


class ResidentSplit:
    """The `layers` of one split, packed on `device`."""

    def __init__(self, reader: SplitReader, layers: Sequence[int] | None, device: torch.device) -> None:
        self.reader, self.device, self.dtype = reader, device, reader.cache.identity.dtype
        features, scales, self.starts, self.rows = [], [], {}, {}
        base = 0
        for name in reader.shards:
            f, s, offsets, rows = reader.read_shard(name, layers)
            reader._close(name)
            features.append(torch.from_numpy(f))
            scales.append(None if s is None else torch.from_numpy(s))
            self.starts[name], self.rows[name] = base + offsets, rows
            base += len(f)
        self.features = torch.cat(features).to(device)
        self.scales = None if scales[0] is None else torch.cat(scales).to(device)

    @staticmethod
    def nbytes(reader: SplitReader, layers: Sequence[int] | None) -> int:
        """What a resident copy of `layers` takes: the stored bytes of the split's shards, scaled
        to the layers kept."""
        total = sum(r.bytes for r in reader.record.shards.values())
        kept = len(layers) if layers is not None else reader.num_layers
        return total * kept // reader.num_layers

    def _load(self, name: str) -> tuple[np.ndarray, Callable[[int], Span]]:
        """The stream's `load` (SplitReader.epoch_order) over this split's spans: nothing read."""
        starts, rows = self.starts[name], self.rows[name]
        return rows, lambda i: (range(int(starts[i]), int(starts[i + 1])), None, int(rows[i]))

    def batches(
        self,
        batch_size: int,
        labels: dict[str, LabelColumn],
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        buffer_size: int,
        keep: np.ndarray | None = None,
        prefetch: int = 2,
    ) -> Iterator[Batch]:
        """One epoch's batches, as the stream would give them, with the `labels` columns, gathered
        on the device."""
        groups = self.reader.epoch_order(self._load, batch_size, shuffle, seed, epoch, buffer_size, keep=keep)
        out = (self._gather(group, labels) for group in groups)
        return prefetched(out, prefetch) if prefetch > 0 else out

    def _gather(self, group: list[Span], labels: dict[str, LabelColumn]) -> Batch:
        starts = np.fromiter((e[0].start for e in group), np.int64, len(group))
        lengths = np.fromiter((len(e[0]) for e in group), np.int64, len(group))
        rows = np.fromiter((e[2] for e in group), np.int64, len(group))
        positions = np.arange(int(lengths.max()))
        mask = positions[None, :] < lengths[:, None]
        index = np.where(mask, starts[:, None] + positions[None, :], len(self.features))  # padding: one past
        index_d, mask_d = to_device(index, self.device), to_device(mask, self.device)
        features = _padded(self.features, index_d)
        scales = None if self.scales is None else _padded(self.scales, index_d)
        features = from_storage(features, None, self.dtype)  # bfloat16 bits viewed as such
        values = {c: to_device(label_values(column, rows), self.device) for c, column in labels.items()}
        return Batch(features, mask_d, values, torch.from_numpy(rows), scales)


def _padded(packed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """packed[index], zeros where the index is one past the end (padding)."""
    flat = index.flatten()
    out = packed.index_select(0, flat.clamp(max=len(packed) - 1))
    out = out.masked_fill((flat == len(packed)).view(-1, *[1] * (packed.dim() - 1)), 0)
    return out.view(*index.shape, *packed.shape[1:])

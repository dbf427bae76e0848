"""What an extraction is asked to do. No torch here: `ytune --help` builds its flags from this
module in a fraction of a second."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ytune.cache.format import DEFAULT_SHARD_BYTES


@dataclass
class ExtractConfig:
    model: str | None = None  # hub id or folder; None: the bundled all-MiniLM-L6-v2
    weights_dtype: str | None = None  # load the encoder's weights as "bfloat16" or "float16"; None: as saved
    # hidden-state indices, transformers' numbering, negatives from the end; None: at most four from
    # the middle third of the depth (encoder.default_layers), which the heads' defaults were measured on
    layers: Sequence[int] | None = None
    max_length: int = 128
    dtype: str = "float16"  # storage: "float16" | "bfloat16"
    backend: str = "zarr"  # "zarr" | "hdf5"
    cache_dir: str | Path | None = (
        None  # root of caches (or an fsspec URL); default $YTUNE_CACHE or ~/.cache/ytune
    )
    batch_tokens: int | None = None  # padded tokens per encoder call; default 4096 on CPU, 32768 on GPU
    shard_bytes: int = DEFAULT_SHARD_BYTES
    device: str | None = None  # default: cuda if available
    autocast: str = "bf16"  # on CUDA: "bf16" | "fp16" | "none"; CPU always runs float32
    progress: bool | None = None  # None: a bar when stderr is a terminal

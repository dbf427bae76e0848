"""What a cache looks like on disk: names, version, and the storage dtypes.

Everything here is part of the contract that docs/cache-format.md documents for readers who use
plain zarr or h5py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ytune.errors import UserError

if TYPE_CHECKING:  # imported where used: the CLI builds its flags from this module and starts fast
    import numpy as np
    import torch

FORMAT_VERSION = 3
CHECKSUMS_SINCE = 2  # format versions from this one on store a checksum in every chunk of every array
INT8_SINCE = 3  # int8 features with a scales array; only int8 caches carry it, so others stay readable
# by a ytune that reads version 2
DEFAULT_SHARD_BYTES = 128 << 20
MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the one process allowed to write the cache
MANIFEST_LOCK = ".manifest.lock"  # held briefly around each manifest update (ranks of one job share it)
STAGING = "staging"  # under the cache root: caches staged for a store until published
TEXTS = "texts.json"  # per split: the texts (and second texts) the features were extracted from
TMP_PREFIX = ".tmp-"  # shards and manifests being written; never part of a cache
DTYPES = ("float16", "bfloat16", "int8")
INT8_MAX = 127  # int8 features are round(value / scale), scale = the group's absmax / INT8_MAX
INT8_GROUP = 64  # channels that share a scale (per token and layer); scales add 2 / INT8_GROUP bytes a value
SUFFIXES = {"zarr": ".zarr", "hdf5": ".h5"}  # the shard formats (manifest "backend") and their names' suffix
FEATURES, SCALES, OFFSETS, ROW = "features", "scales", "offsets", "row"
FLOAT16_LIMIT = 65520.0  # the smallest magnitude that rounds to inf in float16


def format_version(dtype: str) -> int:
    """The version a new cache of `dtype` is written in: the oldest that describes it."""
    return INT8_SINCE if dtype == "int8" else CHECKSUMS_SINCE


def default_root() -> Path:
    """Where caches live unless --cache-dir says otherwise: $YTUNE_CACHE, else ~/.cache/ytune."""
    return Path(os.environ.get("YTUNE_CACHE") or Path.home() / ".cache" / "ytune")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_suffix(backend: str) -> str:
    """The suffix of a backend's shard names; one sentence for a backend this ytune does not know."""
    try:
        return SUFFIXES[backend]
    except KeyError:
        raise UserError(f"unknown cache backend {backend!r}; choose one of {', '.join(SUFFIXES)}.") from None


def to_storage(
    features: torch.Tensor, dtype: str, layers: Sequence[int], checked: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features [tokens, layers, hidden] of any float dtype -> the stored features and, for int8,
    their scales [tokens, layers, groups] (float16); on the features' device, so a GPU copies out
    the stored bytes only.

    bfloat16 has no numpy dtype, so its bits are stored as uint16 and restored exactly by decode.
    int8 keeps one scale per group of `int8_group(hidden)` channels of each token and layer (their
    absmax / INT8_MAX): no calibration pass, nothing clipped, a token's scales travel with it, and
    an outlier channel coarsens only its own group (the scalings compared in RESULTS.md 8). A value
    that float16 cannot hold (float16 storage or int8's float16 scales) is an error naming the
    layer: a silent inf would poison every head trained on the cache. `checked=False` leaves that
    check to the caller (`fits`, then `refuse`), so that a GPU pipeline need not wait for its answer.
    """
    import torch

    if dtype not in DTYPES:
        raise UserError(f"storage dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    if dtype == "bfloat16":
        return features.to(torch.bfloat16).view(torch.uint16), None
    if checked:
        refuse(fits(features, dtype), layers)
    if dtype == "float16":
        return features.to(torch.float16), None
    hidden = features.shape[-1]
    x = features.float().unflatten(-1, (-1, int8_group(hidden)))  # [..., groups, group]
    scales = (x.abs().amax(dim=-1) / INT8_MAX).to(torch.float16)  # rounded first: decode uses these
    step = scales.float().clamp(min=torch.finfo(torch.float16).tiny).unsqueeze(-1)
    return torch.round(x / step).clamp(-INT8_MAX, INT8_MAX).to(torch.int8).flatten(-2), scales


def int8_group(hidden: int) -> int:
    """Channels per scale: INT8_GROUP, or the largest divisor of `hidden` below it (at least 16, so
    scales stay a small part of the bytes); a width with none shares one scale over the vector."""
    return next((g for g in range(INT8_GROUP, 15, -1) if hidden % g == 0), hidden)


def fits(features: torch.Tensor, dtype: str) -> torch.Tensor:
    """[layers] bool for features [..., layers, hidden], on their device (no wait for it): whether every value of the layer
    fits the float16 that `dtype` stores (NaN does not; bfloat16 holds them all). One max per layer
    over the input is half the cost of isfinite on the result."""
    import torch

    if dtype == "bfloat16" or not features.numel():
        return torch.ones(features.shape[-2], dtype=torch.bool, device=features.device)
    per_token = features.reshape(-1, *features.shape[-2:])  # [..., layers, hidden] -> [n, layers, hidden]
    return per_token.abs().amax(dim=(0, 2)) < FLOAT16_LIMIT


def refuse(fitting: torch.Tensor, layers: Sequence[int]) -> None:
    """One sentence naming the first layer `fits` found out of float16's range."""
    if not bool(fitting.all()):
        bad = layers[int((~fitting.cpu()).nonzero()[0])]
        raise UserError(
            f"layer {bad} holds values that float16 cannot represent; extract with --dtype bfloat16."
        )


def encode(features: torch.Tensor, dtype: str, layers: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """to_storage, as the numpy arrays the cache writer takes."""
    stored, scales = to_storage(features, dtype, layers)
    return stored.cpu().numpy(), None if scales is None else scales.cpu().numpy()


def decode(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """The stored array -> a torch tensor in the cache's dtype, bit for bit (no copy); int8 stays
    int8 until widened with its scales."""
    import numpy as np
    import torch

    return from_storage(torch.from_numpy(np.ascontiguousarray(stored)), None, dtype)


def from_storage(stored: torch.Tensor, scales: torch.Tensor | None, dtype: str) -> torch.Tensor:
    """What to_storage kept, as values: bfloat16 bits viewed as such, int8 widened with its scales."""
    import torch

    if scales is not None:
        return widen(stored, scales)
    return stored.view(torch.bfloat16) if dtype == "bfloat16" else stored


def widen(stored: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 features [..., hidden] and their scales [..., groups] -> float16, on their device."""
    grouped = stored.to(scales.dtype).unflatten(-1, (scales.shape[-1], -1))
    return (grouped * scales.unsqueeze(-1)).flatten(-2)


def numpy_dtype(dtype: str) -> np.dtype:
    import numpy as np

    return np.dtype({"bfloat16": np.uint16, "int8": np.int8}.get(dtype, np.float16))

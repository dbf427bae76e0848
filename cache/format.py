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

FORMAT_VERSION = 2
CHECKSUMS_SINCE = 2  # format versions from this one on store a checksum in every chunk of every array
DEFAULT_SHARD_BYTES = 128 << 20
MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the one process allowed to write the cache
MANIFEST_LOCK = ".manifest.lock"  # held briefly around each manifest update (ranks of one job share it)
STAGING = "staging"  # under the cache root: caches staged for a store until published
TEXTS = "texts.json"  # per split: the texts (and second texts) the features were extracted from
TMP_PREFIX = ".tmp-"  # shards and manifests being written; never part of a cache
DTYPES = ("float16", "bfloat16")
SUFFIXES = {"zarr": ".zarr", "hdf5": ".h5"}  # the shard formats (manifest "backend") and their names' suffix
FEATURES, OFFSETS, ROW = "features", "offsets", "row"
FLOAT16_LIMIT = 65520.0  # the smallest magnitude that rounds to inf in float16


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


def to_storage(features: torch.Tensor, dtype: str, layers: Sequence[int]) -> torch.Tensor:
    """Features [tokens, layers, hidden] of any float dtype -> the stored dtype, on their device.

    bfloat16 has no numpy dtype, so its bits are stored as uint16 and restored exactly by decode.
    A value that float16 cannot hold is an error naming the layer: a silent inf would poison
    every head trained on the cache.
    """
    import torch

    if dtype == "bfloat16":
        return features.to(torch.bfloat16).view(torch.uint16)
    if dtype != "float16":
        raise UserError(f"storage dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    # One max over the input (NaN fails the comparison too) is half the cost of isfinite on the
    # result; the per-layer search runs only when something is out of range.
    if features.numel() and not bool(features.abs().amax() < FLOAT16_LIMIT):
        fits = (features.abs() < FLOAT16_LIMIT).flatten(start_dim=2).all(dim=2).all(dim=0)
        bad = [layers[i] for i in torch.nonzero(~fits).flatten().tolist()]
        raise UserError(
            f"layer {bad[0]} holds values that float16 cannot represent; extract with --dtype bfloat16."
        )
    return features.to(torch.float16)


def encode(features: torch.Tensor, dtype: str, layers: Sequence[int]) -> np.ndarray:
    """to_storage, as the numpy array the cache writer takes."""
    return to_storage(features, dtype, layers).cpu().numpy()


def decode(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """The stored array -> a torch tensor in the cache's dtype, bit for bit (no copy)."""
    import numpy as np
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(stored))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def numpy_dtype(dtype: str) -> np.dtype:
    import numpy as np

    return np.dtype(np.uint16 if dtype == "bfloat16" else np.float16)

"""What determines a cache's features, and the id derived from it.

The id is a hash of the identity, never of the path: the same encoder weights over the same texts
with the same settings give the same cache wherever it lives, and anything that would change a
single stored number gives another cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ytune.cache.files import fingerprint


@dataclass(frozen=True)
class Identity:
    encoder: str  # fingerprint of the encoder's weights and config (not its name or path)
    tokenizer: str  # fingerprint of the tokenizer's vocabulary and settings
    max_length: int
    truncation: str  # e.g. "longest_first"
    layers: tuple[int, ...]  # resolved, non-negative hidden-state indices (0 = embeddings)
    dtype: str  # storage dtype: "float16" | "bfloat16"
    dataset: str  # dataset name, e.g. "glue/sst2"; splits record their own text fingerprints

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        return cls(**{**d, "layers": tuple(d["layers"])})

    def cache_id(self) -> str:
        return fingerprint([json.dumps(self.to_dict(), sort_keys=True).encode()])

    def diff(self, other: Identity) -> list[str]:
        """Names of the fields that differ, for error messages that say what does not match."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def resolve_index(i: int, count: int) -> int | None:
    """`i` as a non-negative index into `count` items, negatives counted from the end as Python
    (and timm's `forward_intermediates`) count them; None when out of range. The one rule for every
    layer number ytune takes: hidden states of an encoder, layers of a cache, layers of a head."""
    return i % count if -count <= i < count else None

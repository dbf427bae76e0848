"""What a head is, apart from how it computes: its configuration, the spec of a head to train,
and the settings a user may give it (`--head KEY=VALUE`, `--sweep KEY=...`, the head flags), all
read off these dataclasses so that a new field is a new setting everywhere at once. No torch here:
`ytune --help` builds its flags from this module in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ytune.errors import UserError

HEAD_TYPES = ("ytuning", "probe")
KINDS = ("classification", "regression")
LAYER_MIXES = ("softmax", "ladder", "last")
POOLS = ("mean", "first")
LABEL_INITS = ("random", "names")
SKIPS = ("none", "pooled")
# Defaults measured best with all-MiniLM-L6-v2 (benchmarks/RESULTS.md), per kind of task. Classification
# (SST-2, MRPC, CoLA): 384 wide, 2 blocks, lr 5e-4 (SST-2: 0.856-0.859; 256 x 2 0.834, 512 x 2 0.836,
# 384 x 1 0.851). Regression (STS-B, seeds 0-2): 256 wide, 1 block, lr 1e-3, Pearson 0.809-0.815,
# where the classification default gives 0.789-0.797 (it fits the 5,749 pairs too closely).
KIND_DEFAULTS = {
    "classification": {"width": 384, "blocks": 2, "lr": 5e-4},
    "regression": {"width": 256, "blocks": 1, "lr": 1e-3},
}
HEAD_DIM = 64  # attention heads default to width // 64 (6 at 384, 4 at 256), the transformer convention


@dataclass
class HeadConfig:
    """Everything that determines a head's architecture; stored as JSON next to its weights."""

    head_type: str = field(default="ytuning", metadata={"choices": HEAD_TYPES, "help": "(default: ytuning)"})
    kind: str = "classification"  # "classification" | "regression"
    num_labels: int = 2  # regression always has 1 (set automatically)
    num_layers_in: int = 1  # L, cached layers the head sees
    hidden_in: int = 384  # H, encoder width
    # None: the kind's measured default (KIND_DEFAULTS).
    width: int | None = field(default=None, metadata={"help": "head width (default: 384; regression 256)"})
    blocks: int | None = field(
        default=None, metadata={"help": "label-attention blocks (default: 2; regression 1)"}
    )
    # None: the largest divisor of the width up to width // HEAD_DIM
    heads: int | None = field(
        default=None, metadata={"help": "attention heads (default: width // 64: 6 at 384, 4 at 256)"}
    )
    ffn_mult: int = field(default=2, metadata={"help": "feed-forward width / head width (default: 2)"})
    dropout: float = field(default=0.1, metadata={"help": "(default: 0.1)"})
    # "softmax": learned softmax-weighted sum of the L layers, then LayerNorm; "ladder": block i
    # cross-attends to layer min(i, L-1); "last": only the last layer.
    layer_mix: str = field(default="softmax", metadata={"choices": LAYER_MIXES, "help": "(default: softmax)"})
    pool: str = field(
        default="mean",
        metadata={"choices": POOLS, "help": "probe pooling: over real tokens, or the first (default: mean)"},
    )
    label_init: str = field(
        default="random",
        metadata={
            "choices": LABEL_INITS,
            "help": "Y-Tuning: start the label queries at random, or at the encoder's features of the label names",
        },
    )
    # Y-Tuning only: "pooled" adds a linear read of the mean-pooled features to the label scores, so
    # the head starts from what a probe sees (strong for sentence-embedding encoders) and its label
    # queries learn the rest.
    skip: str = field(
        default="none",
        metadata={
            "choices": SKIPS,
            "help": "Y-Tuning: none, or add a linear read of the mean-pooled features to the label scores (pooled)",
        },
    )

    def __post_init__(self) -> None:
        def check(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise UserError(f"Unknown {name} {value!r}: expected one of {', '.join(allowed)}.")

        check("head type", self.head_type, HEAD_TYPES)
        check("head kind", self.kind, KINDS)
        check("layer mix", self.layer_mix, LAYER_MIXES)
        check("pooling", self.pool, POOLS)
        check("label init", self.label_init, LABEL_INITS)
        check("skip", self.skip, SKIPS)
        for key in ("width", "blocks"):
            if getattr(self, key) is None:
                setattr(self, key, KIND_DEFAULTS[self.kind][key])
        if self.heads is None and self.width >= 1:
            self.heads = next(h for h in range(max(1, self.width // HEAD_DIM), 0, -1) if self.width % h == 0)
        if self.label_init == "names" and (self.head_type == "probe" or self.kind == "regression"):
            raise UserError(
                "label_init=names needs a Y-Tuning classification head (label names to start from)."
            )
        if self.kind == "regression":
            self.num_labels = 1  # one query, one scalar
        elif self.num_labels < 2:
            raise UserError(f"A classification head needs at least 2 labels, got {self.num_labels}.")
        for name in ("num_layers_in", "hidden_in", "width", "blocks", "heads", "ffn_mult"):
            if getattr(self, name) < 1:
                raise UserError(f"Head setting {name} must be at least 1, got {getattr(self, name)}.")
        if self.width % self.heads:
            raise UserError(f"Head width {self.width} is not divisible by the number of heads {self.heads}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"Dropout must be in [0, 1), got {self.dropout}.")
        if self.head_type == "probe" and self.layer_mix == "ladder":
            raise UserError(
                "The linear probe has no blocks: use layer mix 'softmax' or 'last', not 'ladder'."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"Unknown head config field(s) {', '.join(unknown)}: was it written by a newer ytune?"
            )
        return cls(**dict(d))


@dataclass
class HeadSpec:
    """One head to train: its name, the label column it learns, its architecture and optimiser."""

    name: str = "ytuning"
    label: str | None = None  # label column; None: the cache's only column
    config: dict = field(default_factory=dict)  # HeadConfig fields (width, blocks, head_type, ...)
    layers: Sequence[int] | None = None  # hidden states (negatives from the end); None: all cached
    lr: float | None = None  # None: TrainConfig.lr, else the head kind's default
    weight_decay: float | None = None


# Head settings the cache decides, not the user.
FROM_CACHE = {"kind", "num_labels", "num_layers_in", "hidden_in"}


def _setting_types() -> dict[str, type]:
    """Every head setting and the type its values parse to, read off HeadSpec and HeadConfig."""
    types = {}
    for f in [*dataclasses.fields(HeadSpec), *dataclasses.fields(HeadConfig)]:
        if f.name in FROM_CACHE or f.name == "config":
            continue
        hint = str(f.type)
        types[f.name] = (
            list if f.name == "layers" else float if "float" in hint else int if "int" in hint else str
        )
    return types


SETTINGS = _setting_types()
# The HeadConfig fields the `train` command offers as flags (--width, --label-init, ...).
CONFIG_FLAGS = [f for f in dataclasses.fields(HeadConfig) if "help" in f.metadata]


SELECT_ON = ("validation", "holdout")
HOLDOUT = "holdout"  # the name the held-out slice's metrics go by in logs and metrics.json


@dataclass
class TrainConfig:
    # None: by the training set's size (default_epochs). The best epoch is kept: more epochs cost
    # time, never accuracy.
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None  # None: the head kind's measured default (model.KIND_DEFAULTS)
    weight_decay: float = 0.01
    warmup: float = 0.06  # share of the steps spent warming up
    clip: float = 1.0
    seed: int = 0
    patience: int = 0  # epochs without improvement before a head stops; 0: never
    train_split: str = "train"
    eval_split: str = "validation"
    # Where each head's best epoch is chosen: "validation" (the evaluation split, GLUE-dev style), or
    # "holdout": a seeded slice of the training split that no head trains on (see holdout_rows); the
    # evaluation split is then read once, at the end, for the chosen checkpoints. None: holdout for a
    # sweep (whose winner is chosen there too: a dozen heads would flatter a small validation
    # split), validation otherwise.
    select_on: str | None = None
    device: str | None = None
    workers: int = 0  # DataLoader worker processes reading the cache; 0: a prefetch thread
    # Torch threads on CPU. Heads are small: a second thread gained 15% on an idle 2-core machine
    # but cost 30x when the cores were busy (every tiny op waits for a free core), so 1 by default.
    threads: int = 1
    buffer_size: int = 4096  # shuffle buffer, in examples
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.select_on is not None and self.select_on not in SELECT_ON:
            raise UserError(f"select_on must be one of {', '.join(SELECT_ON)}, not {self.select_on!r}.")


def parse_layers(text: str) -> list[int]:
    """Hidden states: `-1`; a range `-4:-1` (both ends included); a list `0+3+6`."""
    out: list[int] = []
    try:
        for part in text.split("+"):
            a, colon, b = part.partition(":")
            first, last = int(a), int(b) if colon else int(a)
            if (first < 0) != (last < 0) or first > last:
                raise ValueError
            out += range(first, last + 1)
    except ValueError:
        raise UserError(f"layers {text!r}: write one index (-1), a range with both ends of one sign (-4:-1), "
                        "or indices joined by + (0+3+6).") from None  # fmt: skip
    return out


def parse_value(key: str, text: str):
    """One head setting's value, typed; one sentence if it is not a setting or not a value of it."""
    if key not in SETTINGS:
        raise UserError(f"unknown head setting {key!r}; settings are: {', '.join(sorted(SETTINGS))}.")
    kind = SETTINGS[key]
    if kind is list:
        return parse_layers(text)
    try:
        return kind(text)
    except ValueError:
        raise UserError(
            f"head setting {key}={text!r} is not {'a number' if kind is float else 'an integer'}."
        ) from None


def with_settings(spec: HeadSpec, settings: Mapping[str, str], name: str | None = None) -> HeadSpec:
    """`spec` with settings (as typed on the command line) applied over it."""
    fields = {f.name for f in dataclasses.fields(HeadSpec)}
    top, config = {}, dict(spec.config)
    for key, text in settings.items():
        value = parse_value(key, text)
        if key in fields:
            top[key] = value
        else:
            config[key] = value
    return dataclasses.replace(spec, **top, config=config, **({"name": name} if name else {}))


def parse_pairs(text: str) -> dict[str, str]:
    """`KEY=VALUE,KEY=VALUE` (a --head) -> {key: value text}."""
    pairs = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise UserError(
                f"--head takes KEY=VALUE pairs with keys {', '.join(sorted(SETTINGS))}; got {item!r}."
            )
        pairs[key] = value
    return pairs


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`--sweep KEY=V1,V2,...` (repeatable) -> {key: [value texts]}, each value checked now."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        texts = [v for v in values.split(",") if v]
        if not eq or not texts:
            raise UserError(f"--sweep takes KEY=V1,V2,...; got {item!r}.")
        if key == "name":
            raise UserError("--sweep cannot sweep names: each head is named after its settings.")
        if key in grid:
            raise UserError(f"--sweep {key} is given twice; list all its values in one --sweep.")
        for text in texts:
            parse_value(key, text)
        if len(set(texts)) != len(texts):
            raise UserError(f"--sweep {key} lists a value twice: {values}.")
        grid[key] = texts
    return grid

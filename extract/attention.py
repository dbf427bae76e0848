"""The fast encoder path for DeBERTa-v2/v3: disentangled-flash's encoder in place of transformers'.

transformers scores every query against all 2 x position_buckets relative positions in every layer,
then gathers the ones a batch reaches; the package scores only those (at most 2T - 1 for T tokens),
and on CUDA its Triton kernel computes the attention tile by tile, never holding [B, H, T, T]
scores. The hidden states are transformers' within float rounding (tests/test_attention.py), so the
cache identity does not record which path made them, as it does not record the autocast mode.

`auto` takes it wherever it runs: the Triton kernel on CUDA; the package's torch backend on a CPU,
where it measured faster than transformers on short rows and as close to it as float32 rounding
(benchmarks/RESULTS.md 6). On CUDA without a Triton kernel for the model (no Triton, or a head size
the kernel lacks) `auto` keeps transformers' attention, which is unmeasured against the torch
backend there; `fast` forces that backend.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn

from ytune.errors import UserError
from ytune.extract.config import ATTENTION_MODES

log = logging.getLogger(__name__)

DEBERTA_V2 = "deberta-v2"  # transformers' model type of DeBERTa-v2 and DeBERTa-v3


def enable_attention(model: nn.Module, attention: str = "auto") -> bool:
    """Swap the fast encoder into `model` (on its device, weights in their dtype) where `attention`
    asks for it; True when the model now runs it. `fast` on an encoder it cannot run is an error,
    `auto` falls back to transformers with one line saying why."""
    if attention not in ATTENTION_MODES:
        raise UserError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {attention!r}.")
    model_type = model.config.model_type
    if attention == "eager" or (attention == "auto" and model_type != DEBERTA_V2):
        return False
    flash = _package()
    if attention == "fast" and model_type != DEBERTA_V2:
        raise UserError(
            f"--attention fast runs DeBERTa-v2/v3 encoders only, not {model_type}: use --attention auto or eager."
        )
    if flash is None:
        if attention == "fast":
            raise UserError(
                "--attention fast needs disentangled-flash: pip install 'disentangled-flash>=1.1.1'."
            )
        log.info("attention: transformers' (disentangled-flash is not installed)")
        return False
    # the package's "auto" takes Triton where it runs this model: CUDA, Triton, a head size it has
    flash.enable_deberta_inference(model, backend="auto")
    if not isinstance(model.encoder, flash.DebertaV2OptimizedEncoder):
        if attention == "auto" and next(model.parameters()).device.type == "cuda":
            log.info("attention: transformers' (no Triton here, or a head size its kernel lacks)")
            return False
        flash.enable_deberta_inference(model, backend="torch")
    for layer in model.encoder.layer:
        attention_module = layer.attention.self
        attention_module.forward_prepared = partial(_autocast_input, attention_module.forward_prepared)
    log.info("attention: disentangled-flash, %s backend", model.encoder.backend)
    return True


def activate(model: nn.Module, length: int) -> None:
    """Ready the fast encoder for a batch padded to `length` tokens (nothing on transformers' path).

    The package runs only lengths it has prepared position plans for. One length is kept at a time:
    the torch backend's plans cost a [2T, H] table per layer and length, too much to hold for every
    length a run meets, and length-sorted batches change length at most once a batch. Preparing
    after `truncate` covers only the layers left."""
    encoder = getattr(model, "encoder", None)
    if not hasattr(encoder, "activate_shape"):
        return
    try:
        encoder.activate_shape(length)
    except ValueError:  # not prepared (or dropped by a move to another device): prepare it
        encoder.prepare_for_inference(length)


def _autocast_input(forward, hidden_states: torch.Tensor, attention_mask: torch.Tensor, plan):
    """One layer's attention, its input in the autocast dtype when autocast is on. The Triton
    kernel picks its arithmetic from the dtype of its input, while autocast hands it Q, K and V in
    the autocast dtype: float32 (or float16) layer outputs with bfloat16 Q/K/V do not compile."""
    kind = hidden_states.device.type
    if torch.is_autocast_enabled(kind):
        hidden_states = hidden_states.to(torch.get_autocast_dtype(kind))
    return forward(hidden_states, attention_mask, plan)


def _package():
    """disentangled_flash, or None where it is not installed."""
    try:
        import disentangled_flash
    except ImportError:
        return None
    return disentangled_flash

"""Heads that learn on cached encoder features: the Y-Tuning head, the linear-probe baseline, a bank.

Every head takes ``features`` [B, T, L, H] (any float dtype; cast to the head's dtype inside, after the
layer mix, so the big tensor is never copied whole) and ``mask`` [B, T] (bool, True = real token;
every row has at least one real token), and returns logits [B, num_labels] for classification or
scores [B] for regression. Padding changes nothing: padded positions are excluded from attention and
from pooling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ytune.errors import UserError

HEAD_TYPES = ("ytuning", "probe")
KINDS = ("classification", "regression")
LAYER_MIXES = ("softmax", "ladder", "last")
POOLS = ("mean", "first")
# Defaults measured best with all-MiniLM-L6-v2 (benchmarks/RESULTS.md), per kind of task. Classification
# (SST-2, MRPC, CoLA): 384 wide, 2 blocks, lr 5e-4 (SST-2: 0.856-0.859; 256 x 2 0.834, 512 x 2 0.836,
# 384 x 1 0.851). Regression (STS-B, seeds 0-2): 256 wide, 1 block, lr 1e-3, Pearson 0.809-0.815,
# where the classification default gives 0.789-0.797 (it fits the 5,749 pairs too closely).
KIND_DEFAULTS = {
    "classification": {"width": 384, "blocks": 2, "heads": 6, "lr": 5e-4},
    "regression": {"width": 256, "blocks": 1, "heads": 4, "lr": 1e-3},
}


@dataclass
class HeadConfig:
    """Everything that determines a head's architecture; stored as JSON next to its weights."""

    head_type: str = "ytuning"  # "ytuning" | "probe"
    kind: str = "classification"  # "classification" | "regression"
    num_labels: int = 2  # regression always has 1 (set automatically)
    num_layers_in: int = 1  # L, cached layers the head sees
    hidden_in: int = 384  # H, encoder width
    # None: the kind's measured default (KIND_DEFAULTS).
    width: int | None = None  # head width d
    blocks: int | None = None
    heads: int | None = None
    ffn_mult: int = 2
    dropout: float = 0.1
    # "softmax": learned softmax-weighted sum of the L layers, then LayerNorm; "ladder": block i
    # cross-attends to layer min(i, L-1); "last": only the last layer.
    layer_mix: str = "softmax"
    pool: str = "mean"  # probe only: "mean" over real tokens | "first"
    label_init: str = "random"  # Y-Tuning only: "random" | "names" (queries start at the encoder's features of the label names)

    def __post_init__(self) -> None:
        def check(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise UserError(f"Unknown {name} {value!r}: expected one of {', '.join(allowed)}.")

        check("head type", self.head_type, HEAD_TYPES)
        check("head kind", self.kind, KINDS)
        check("layer mix", self.layer_mix, LAYER_MIXES)
        check("pooling", self.pool, POOLS)
        check("label init", self.label_init, ("random", "names"))
        for key in ("width", "blocks", "heads"):
            if getattr(self, key) is None:
                setattr(self, key, KIND_DEFAULTS[self.kind][key])
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


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _check_inputs(features: torch.Tensor, mask: torch.Tensor, num_layers: int) -> torch.Tensor:
    if features.dim() != 4:
        raise ValueError(f"features must be [B, T, L, H], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(
            f"features must be a float tensor, got {features.dtype} (view uint16 bfloat16 bits as torch.bfloat16)"
        )
    if features.shape[2] != num_layers:
        raise ValueError(f"the head expects {num_layers} cached layer(s), features have {features.shape[2]}")
    if mask.shape != features.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match features {tuple(features.shape[:2])}"
        )
    return mask if mask.dtype == torch.bool else mask.to(torch.bool)


class _MixLayers(torch.autograd.Function):
    """sum_l w[l] * features[:, :, l], computed one layer at a time in w's dtype.

    Autograd on the plain expression would keep a cast copy of every layer for the weights' gradient;
    this keeps only a reference to ``features`` (which needs no gradient) and re-reads it backwards.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, weights)
        out = features[:, :, 0].to(weights.dtype) * weights[0]
        for i in range(1, features.shape[2]):
            out.add_(features[:, :, i].to(weights.dtype) * weights[i])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, weights = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack(
                [(grad_out * features[:, :, i].to(weights.dtype)).sum() for i in range(features.shape[2])]
            )
        return None, grad_w


class LayerMix(nn.Module):
    """Reduce [B, T, L, H] to [B, T, H] in ``dtype``: softmax-weighted sum of the layers, or the last one.

    No LayerNorm here: the heads apply their own.
    """

    def __init__(self, num_layers: int, mode: str = "softmax") -> None:
        super().__init__()
        self.num_layers = num_layers
        self.mode = mode
        # A single layer needs no weights (softmax of one logit is 1, its gradient is 0).
        self.logits = nn.Parameter(torch.zeros(num_layers)) if mode == "softmax" and num_layers > 1 else None

    def forward(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.logits is None:
            return features[:, :, -1].to(dtype)
        weights = torch.softmax(self.logits.to(dtype), dim=0)
        if features.requires_grad:  # not expected (features are cached), but stay correct
            return torch.einsum("btlh,l->bth", features.to(dtype), weights)
        return _MixLayers.apply(features, weights)


class _Attention(nn.Module):
    """Multi-head attention from queries [B, K, d] to a memory of T tokens, with d // heads per head.

    The memory is given either as [B, T, d] (``forward``) or, for cross-attention, before the head's
    projection as [B, T, H] with the projection (``forward_factored``). The factored form folds the
    projection and the key/value maps into the K * heads query rows, so no per-token [B, T, d] key or
    value is ever built: per token it costs 2 * K * heads * H multiply-adds instead of H * d + 2 * d * d.
    With a few labels that is one to two orders of magnitude less; the result is the same function.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        # Separate key and value maps: the factored form uses their weights apart, and slicing one
        # fused [2d, d] weight costs a zero-filled full-size gradient per slice in the backward.
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # [b, len, d] -> [b, heads, len, d // heads]
            return y.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        attn_mask = None if mask is None else mask[:, None, None, :]
        o = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(memory)), split(self.v(memory)), attn_mask=attn_mask
        )
        return self.out(o.transpose(1, 2).reshape(b, n, d))

    def forward_factored(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, norm: nn.LayerNorm, proj: nn.Module
    ) -> torch.Tensor:
        """Same as ``forward(x, proj(norm(m)), mask)``, given ``memory`` = the LayerNorm of m without its
        affine part: [B, T, H]. The LayerNorm's affine map and the projection fold into the weights, so
        with cached features (no gradient) no per-token tensor needs a gradient.
        """
        b, k, d = x.shape
        hid = memory.shape[2]
        h, dh = self.heads, d // self.heads
        w_k, w_v = self.k.weight, self.v.weight  # [d, d] each (out, in)
        if isinstance(proj, nn.Linear):  # proj(norm(m)) = a @ n + c
            a = proj.weight * norm.weight  # [d, H]
            b_v = w_v @ (proj.weight @ norm.bias + proj.bias) + self.v.bias
            w_k, w_v = w_k @ a, w_v @ a  # [d, H]
        else:  # proj is the identity
            b_v = w_v @ norm.bias + self.v.bias
            w_k, w_v = w_k * norm.weight, w_v * norm.weight
        # Attention weights sum to 1, so the value bias b_v passes through; the key bias adds the same
        # score to every token of a query row, and softmax ignores it.
        # Per-head products are batched over the heads ([h, B*K, .]); per-example ones over B.
        q = self.q(x).view(b, k, h, dh).permute(2, 0, 1, 3).reshape(h, b * k, dh)
        q_mem = torch.bmm(q * (1.0 / math.sqrt(dh)), w_k.view(h, dh, hid))  # [h, B*K, H]
        q_mem = q_mem.view(h, b, k, hid).transpose(0, 1).reshape(b, h * k, hid)
        scores = torch.bmm(q_mem, memory.transpose(1, 2)).masked_fill(~mask[:, None, :], float("-inf"))
        pooled = torch.bmm(torch.softmax(scores, dim=-1), memory)  # [B, h*K, H]
        pooled = pooled.view(b, h, k, hid).transpose(0, 1).reshape(h, b * k, hid)
        o = torch.bmm(pooled, w_v.view(h, dh, hid).transpose(1, 2))  # [h, B*K, dh]
        o = o.view(h, b, k, dh).permute(1, 2, 0, 3).reshape(b, k, d) + b_v
        return self.out(o)


class _Block(nn.Module):
    """Pre-LayerNorm block on the label vectors: self-attention, cross-attention to the text, FFN."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.norm_cross = nn.LayerNorm(width)
        self.norm_ffn = nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads)
        self.cross_attn = _Attention(width, heads)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_mult * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * width, width),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        q: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        factored: tuple[nn.LayerNorm, nn.Module] | None = None,
    ) -> torch.Tensor:
        """``factored`` = (norm, proj): ``memory`` is [B, T, H], normalised without the norm's affine part,
        and the text tokens are ``proj(norm(.))`` of it; otherwise ``memory`` is the tokens, [B, T, d]."""
        # The first block gets the label queries as [1, K, d]: their self-attention is the same for
        # every example, so it is computed once and broadcast (dropout still draws per example).
        y = self.norm_self(q)
        q = q + self.drop(self.self_attn(y, y).expand(len(memory), -1, -1))
        y = self.norm_cross(q)
        if factored is None:
            q = q + self.drop(self.cross_attn(y, memory, mask))
        else:
            q = q + self.drop(self.cross_attn.forward_factored(y, memory, mask, *factored))
        return q + self.drop(self.ffn(self.norm_ffn(q)))


class YTuningHead(nn.Module):
    """Y-Tuning: learned label queries cross-attend to the (frozen, cached) text token features."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_in, cfg.width
        self.num_queries = 1 if cfg.kind == "regression" else cfg.num_labels
        if cfg.layer_mix == "ladder":
            self.mix = None
            # block i reads layer min(i, L-1); each layer read gets its own LayerNorm.
            self.block_layers = [min(i, cfg.num_layers_in - 1) for i in range(cfg.blocks)]
            layers = sorted(set(self.block_layers))
            self.norms_in = nn.ModuleList(nn.LayerNorm(h) for _ in layers)
            self.norm_index = {layer: i for i, layer in enumerate(layers)}
        else:
            self.mix = LayerMix(cfg.num_layers_in, cfg.layer_mix)
            self.block_layers = None
            self.norms_in = nn.ModuleList([nn.LayerNorm(h)])
            self.norm_index = {0: 0}
        self.proj = nn.Identity() if h == d else nn.Linear(h, d)
        self.queries = nn.Parameter(torch.empty(self.num_queries, d))
        # Unit scale, like embeddings: at std 0.02 the label queries start nearly identical, and
        # measured here one seed in three sat at the majority class for all 3 epochs of SST-2.
        nn.init.normal_(self.queries, std=1.0)
        self.blocks = nn.ModuleList(
            _Block(d, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.norm_out = nn.LayerNorm(d)
        self.score = nn.Linear(d, 1)
        # How cross-attention reads the text: "auto" picks the cheaper of "factored" (keys and values
        # folded into the label queries) and "direct" (per-token keys and values). Same function.
        self.attention = "auto"

    @property
    def dtype(self) -> torch.dtype:
        return self.queries.dtype

    @torch.no_grad()
    def init_queries(self, vectors: torch.Tensor) -> None:
        """Initialise the label queries, e.g. from the encoder's embeddings of the label names.

        ``vectors`` is [num_labels, d] (copied as is) or [num_labels, H] in the encoder's space (passed
        through the head's input LayerNorm and projection).
        """
        n, d, h = self.num_queries, self.cfg.width, self.cfg.hidden_in
        if vectors.dim() != 2 or vectors.shape[0] != n or vectors.shape[1] not in (d, h):
            raise UserError(
                f"Label query vectors must be [{n}, {d}] (head width) or [{n}, {h}] (encoder width), "
                f"got {list(vectors.shape)}."
            )
        v = vectors.to(device=self.queries.device, dtype=self.dtype)
        if v.shape[1] != d:
            v = self.proj(self.norms_in[0](v))
        self.queries.copy_(v)

    def _use_factored(self, tokens: int) -> bool:
        """Whether factored cross-attention is cheaper (in multiply-adds) for a batch of ``tokens``."""
        if self.attention in ("factored", "direct"):
            return self.attention == "factored"
        cfg = self.cfg
        h, d = cfg.hidden_in, cfg.width
        project = h * d if h != d else 0
        direct = tokens * (project * len(self.norms_in) + cfg.blocks * 2 * d * d)
        folding = cfg.blocks * 2 * d * d * h if h != d else 0  # key/value weights times the projection
        factored = tokens * cfg.blocks * 2 * cfg.heads * self.num_queries * h + folding
        return factored <= direct

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.cfg.num_layers_in)
        factored = self._use_factored(features.shape[0] * features.shape[1])
        q = self.queries.unsqueeze(0)  # [1, K, d]: the first block broadcasts it over the batch
        memories: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            j = 0 if self.block_layers is None else self.block_layers[i]
            if j not in memories:
                if self.block_layers is None:
                    x = self.mix(features, self.dtype)
                else:
                    x = features[:, :, j].to(self.dtype)
                norm = self.norms_in[self.norm_index[j]]
                if factored:
                    memories[j] = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
                else:
                    memories[j] = self.proj(norm(x))
            norm = self.norms_in[self.norm_index[j]]
            q = block(q, memories[j], mask, (norm, self.proj) if factored else None)
        logits = self.score(self.norm_out(q)).squeeze(-1)  # [B, K]
        return logits[:, 0] if self.cfg.kind == "regression" else logits


class LinearProbe(nn.Module):
    """Baseline: layer mix (softmax weights) -> pool (mean over real tokens, or first token) -> LayerNorm -> Linear."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mix = LayerMix(cfg.num_layers_in, cfg.layer_mix)
        self.norm = nn.LayerNorm(cfg.hidden_in)
        self.linear = nn.Linear(cfg.hidden_in, cfg.num_labels)

    @property
    def dtype(self) -> torch.dtype:
        return self.linear.weight.dtype

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.cfg.num_layers_in)
        if self.cfg.pool == "first":
            pooled = self.mix(features[:, :1], self.dtype)[:, 0]
        else:
            # Pooling and mixing are both linear; mixing first keeps the float copy at [B, T, H].
            x = self.mix(features, self.dtype)
            m = mask.to(self.dtype).unsqueeze(-1)
            pooled = (x * m).sum(1) / m.sum(1)
        out = self.linear(self.norm(pooled))
        return out[:, 0] if self.cfg.kind == "regression" else out


def build_head(cfg: HeadConfig) -> nn.Module:
    if cfg.head_type == "probe":
        return LinearProbe(cfg)
    return YTuningHead(cfg)


class HeadBank(nn.Module):
    """Several named heads trained on the same batch, each on its own selection of the cached layers.

    ``layers[name]`` indexes the L axis of the features passed to ``forward``; heads sharing a
    selection share one gathered tensor (a view when the selection is a contiguous ascending range).
    """

    def __init__(self, heads: Mapping[str, tuple[nn.Module, Sequence[int]]] | None = None) -> None:
        super().__init__()
        self.heads = nn.ModuleDict()
        self.layers: dict[str, tuple[int, ...]] = {}
        for name, (head, layers) in (heads or {}).items():
            self.add(name, head, layers)

    def add(self, name: str, head: nn.Module, layers: Sequence[int]) -> None:
        if not name or "." in name:
            raise UserError(f"Head name {name!r} must be non-empty and contain no '.'.")
        if name in self.heads:
            raise UserError(f"A head named {name!r} is already in the bank.")
        layers = tuple(int(i) for i in layers)
        if not layers:
            raise UserError(f"Head {name!r} needs at least one layer.")
        cfg = getattr(head, "cfg", None)
        if cfg is not None and cfg.num_layers_in != len(layers):
            raise UserError(
                f"Head {name!r} expects {cfg.num_layers_in} layer(s) but was given {len(layers)}."
            )
        self.heads[name] = head
        self.layers[name] = layers

    @classmethod
    def reading(cls, heads: Mapping[str, tuple[nn.Module, Sequence[int]]]) -> tuple[HeadBank, list[int]]:
        """A bank of heads that each name the hidden states they read, and the sorted union of
        those layers: the features to feed it ([B, T, len(union), H]), read once for all heads."""
        union = sorted({i for _, layers in heads.values() for i in layers})
        return cls({n: (h, [union.index(i) for i in layers]) for n, (h, layers) in heads.items()}), union

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, names: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Outputs of the heads ``names`` (default: all), e.g. only those still training."""
        n = features.shape[2]
        selected: dict[tuple[int, ...], torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for name in self.heads if names is None else names:
            head, layers = self.heads[name], self.layers[name]
            if layers not in selected:
                if not all(-n <= i < n for i in layers):
                    raise ValueError(f"head {name!r} selects layers {layers}, features have {n}")
                norm = tuple(i % n for i in layers)
                if norm == tuple(range(norm[0], norm[0] + len(norm))):
                    selected[layers] = features[:, :, norm[0] : norm[0] + len(norm)]
                else:
                    idx = torch.tensor(norm, device=features.device)
                    selected[layers] = features.index_select(2, idx)
            out[name] = head(selected[layers], mask)
        return out


__all__ = [
    "HeadConfig",
    "KIND_DEFAULTS",
    "YTuningHead",
    "LinearProbe",
    "LayerMix",
    "HeadBank",
    "build_head",
    "count_parameters",
]

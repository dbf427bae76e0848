"""Heads that learn on cached encoder features: the Y-Tuning head, the linear-probe baseline, a bank.

Every head module is a stack of K heads of one shape: each parameter carries a leading head axis
[K, ...] and the K heads run as batched matrix products in one forward, so a sweep of learning
rates or seeds pays one module's Python and kernel launches, not K. A single head is a stack of
one; a saved head is its slice without the head axis, the same file whatever stack it trained in.
An ensemble head (HeadConfig.members = M) is M rows of the stack: its parameters carry [K * M, ...],
its forward returns every member's output, ``combine`` averages them into the head's answer, and
its saved file keeps the member axis [M, ...].

Heads take ``features`` [B, T, L, H] (any float dtype) and ``mask`` [B, T] (bool, True = real token;
every row has at least one real token), and return [K, B, num_labels] logits for classification or
[K, B] scores for regression (``forward_layers``: [K * M, ...], every member's). ``forward_layers`` takes the features already cast and laid out
layer-major, [L, B, T, H]: the bank does that once per batch for every head. Padding changes
nothing: padded positions are excluded from attention and from pooling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ytune.cache.identity import resolve_index
from ytune.errors import UserError
from ytune.train.config import HeadConfig
from ytune.train.dropout import HeadDropout


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (of all K heads of a stack together)."""
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


def layer_major(features: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, T, L, H] as stored -> [L, B, T, H] in ``dtype``, contiguous: one cast for every head, and
    the layout in which a layer mix is one matrix product."""
    b, t, n, h = features.shape
    return torch.empty((n, b, t, h), dtype=dtype, device=features.device).copy_(features.permute(2, 0, 1, 3))


def _per_head(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-head vector p [K, n] shaped to broadcast against x [K, ..., n]."""
    return p.view(p.shape[0], *([1] * (x.dim() - 2)), p.shape[-1])


class _LinearFunction(torch.autograd.Function):
    """y = x @ W^T + b for K stacked maps, with W's gradient computed in W's own layout.

    Written as plain autograd, the gradient of W^T arrives transposed and is copied into W's layout:
    a transposed copy of every weight gradient, measured as the largest single cost of a stacked
    step on CPU (a head's work is weight-sized: 64 label rows against 384 x 384 weights).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        # Under autocast the forward ran in grad's dtype (bfloat16): so does the backward, as autograd's would.
        grad_x = torch.bmm(grad, weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x.to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_w, grad.sum(1).to(weight.dtype)


class Linear(nn.Module):
    """K affine maps, one per head: x [K, ..., in] -> [K, ..., out] in one batched product.
    Parameters are named and initialised as nn.Linear's, with the head axis in front."""

    def __init__(self, k: int, n_in: int, n_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(k, n_out, n_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n_out = self.weight.shape[:2]
        y = _LinearFunction.apply(x.reshape(k, -1, x.shape[-1]), self.weight, self.bias)
        return y.view(*x.shape[:-1], n_out)


class LayerNorm(nn.Module):
    """K LayerNorms: one normalisation, each head's own affine map. Accepts x [1, ...] (an input
    every head shares) and broadcasts it to the K heads."""

    def __init__(self, k: int, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(k, n))
        self.bias = nn.Parameter(torch.zeros(k, n))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation alone: the same for every head."""
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(_per_head(self.bias, x), self.normalise(x), _per_head(self.weight, x))


class LayerMix(nn.Module):
    """Reduce layer-major features [L, B, T, H] to [K, B, T, H]: each head's softmax-weighted sum of
    the layers; or the last layer, the same for every head ([1, B, T, H]). No LayerNorm here: the
    heads apply their own."""

    def __init__(self, k: int, num_layers: int, mode: str = "softmax") -> None:
        super().__init__()
        # A single layer needs no weights (softmax of one logit is 1, its gradient is 0).
        self.logits = (
            nn.Parameter(torch.zeros(k, num_layers)) if mode == "softmax" and num_layers > 1 else None
        )

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            return layers[-1:]
        weights = torch.softmax(self.logits.to(layers.dtype), dim=-1)  # [K, L]
        return (weights @ layers.reshape(layers.shape[0], -1)).view(-1, *layers.shape[1:])


class _Attention(nn.Module):
    """Multi-head attention from queries [K, B, n, d] to a memory of T tokens, d // heads per head.

    The memory is given either as [K, B, T, d] (``forward``) or, for cross-attention, before the
    head's projection as [K or 1, B, T, H] with the projection (``forward_factored``). The factored
    form folds the projection and the key/value maps into the n * heads query rows, so no per-token
    [B, T, d] key or value is ever built: per token it costs 2 * n * heads * H multiply-adds instead of
    H * d + 2 * d * d. With a few labels that is one to two orders of magnitude less; the result is
    the same function.
    """

    def __init__(self, k: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = Linear(k, width, width)
        # Separate key and value maps: the factored form uses their weights apart, and slicing one
        # fused [2d, d] weight costs a zero-filled full-size gradient per slice in the backward.
        self.k = Linear(k, width, width)
        self.v = Linear(k, width, width)
        self.out = Linear(k, width, width)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        k, b, n, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:  # [K, b, len, d] -> [K * b, heads, len, d // heads]
            return y.view(k * y.shape[1], -1, h, d // h).transpose(1, 2)

        attn_mask = None
        if mask is not None:
            attn_mask = mask[None, :, None, None, :].expand(k, -1, -1, -1, -1).reshape(k * b, 1, 1, -1)
        o = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(memory)), split(self.v(memory)), attn_mask=attn_mask
        )
        return self.out(o.transpose(1, 2).reshape(k, b, n, d))

    def forward_factored(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, norm: LayerNorm, proj: Linear | None
    ) -> torch.Tensor:
        """Same as ``forward(x, proj(norm(m)), mask)``, given ``memory`` = norm.normalise(m): the
        LayerNorm's affine map and the projection fold into the weights, so with cached features (no
        gradient) no per-token tensor needs a gradient, and a memory shared by the K heads ([1, B, T, H])
        is read as it is."""
        k, b, n, d = x.shape
        km, _, t, hid = memory.shape
        h, dh, per = self.heads, d // self.heads, k // km
        w_k, w_v = self.k.weight, self.v.weight  # [K, d, d] each (out, in)
        gain = norm.weight.unsqueeze(1)  # [K, 1, H]
        if proj is not None:  # proj(norm(m)) = a @ n + c
            a = proj.weight * gain  # [K, d, H]
            c = torch.baddbmm(proj.bias.unsqueeze(-1), proj.weight, norm.bias.unsqueeze(-1))  # [K, d, 1]
            w_k, w_v = torch.bmm(w_k, a), torch.bmm(w_v, a)  # [K, d, H]
        else:  # proj is the identity
            c = norm.bias.unsqueeze(-1)
            w_k, w_v = w_k * gain, w_v * gain
        b_v = torch.bmm(self.v.weight, c).squeeze(-1) + self.v.bias  # [K, d]
        # Attention weights sum to 1, so the value bias b_v passes through; the key bias adds the same
        # score to every token of a query row, and softmax ignores it.
        # Per-head products are batched over (stack head, attention head) = [K * h, B * n, .]; per-example
        # ones over (memory, example) = [km * B, per * h * n, .].
        q = self.q(x).view(k, b, n, h, dh).permute(0, 3, 1, 2, 4).reshape(k * h, b * n, dh)
        q_mem = torch.bmm(q * (1.0 / math.sqrt(dh)), w_k.view(k * h, dh, hid))  # [K*h, B*n, H]
        q_mem = q_mem.view(km, per, h, b, n, hid).permute(0, 3, 1, 2, 4, 5).reshape(km * b, per * h * n, hid)
        mem = memory.reshape(km * b, t, hid)
        scores = torch.bmm(q_mem, mem.transpose(1, 2)).view(km, b, -1, t)
        scores = scores.masked_fill(~mask[None, :, None, :], float("-inf")).view(km * b, -1, t)
        pooled = torch.bmm(torch.softmax(scores, dim=-1), mem)  # [km*B, per*h*n, H]
        pooled = pooled.view(km, b, per, h, n, hid).permute(0, 2, 3, 1, 4, 5).reshape(k * h, b * n, hid)
        o = torch.bmm(pooled, w_v.view(k * h, dh, hid).transpose(1, 2))  # [K*h, B*n, dh]
        o = o.view(k, h, b, n, dh).permute(0, 2, 3, 1, 4).reshape(k, b, n, d) + b_v[:, None, None, :]
        return self.out(o)


class _Block(nn.Module):
    """Pre-LayerNorm block on the label vectors: self-attention, cross-attention to the text, FFN."""

    def __init__(self, k: int, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = LayerNorm(k, width)
        self.norm_cross = LayerNorm(k, width)
        self.norm_ffn = LayerNorm(k, width)
        self.self_attn = _Attention(k, width, heads)
        self.cross_attn = _Attention(k, width, heads)
        self.ffn = nn.Sequential(
            Linear(k, width, ffn_mult * width),
            nn.GELU(),
            HeadDropout(dropout),
            Linear(k, ffn_mult * width, width),
        )
        self.drop = HeadDropout(dropout)

    def forward(
        self,
        q: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        factored: tuple[LayerNorm, Linear | None] | None = None,
    ) -> torch.Tensor:
        """``factored`` = (norm, proj): ``memory`` is [K or 1, B, T, H], normalised without the norm's
        affine part, and the text tokens are ``proj(norm(.))`` of it; otherwise ``memory`` is the
        tokens, [K, B, T, d]."""
        # The first block gets the label queries as [K, 1, n, d]: their self-attention is the same for
        # every example, so it is computed once and broadcast (dropout still draws per example).
        y = self.norm_self(q)
        q = q + self.drop(self.self_attn(y, y).expand(-1, memory.shape[1], -1, -1))
        y = self.norm_cross(q)
        if factored is None:
            q = q + self.drop(self.cross_attn(y, memory, mask))
        else:
            q = q + self.drop(self.cross_attn.forward_factored(y, memory, mask, *factored))
        return q + self.drop(self.ffn(self.norm_ffn(q)))


class _Head(nn.Module):
    """What every stack of heads shares: its config, its size K, the public forward."""

    cfg: HeadConfig

    @property
    def rows(self) -> int:
        """K * M, the parameters' leading axis: every member of every head in this stack."""
        return next(self.parameters()).shape[0]

    @property
    def size(self) -> int:
        """K, the number of heads in this stack."""
        return self.rows // self.cfg.members

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.cfg.num_layers_in)
        return self.combine(self.forward_layers(layer_major(features, self.dtype), mask))

    def forward_layers(self, layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """Every member's output [K * M, B, ...] -> each head's [K, B, ...]: the members' mean score, or
        the log of their mean probability (logits whose softmax is that mean). Averaging
        probabilities, not logits, keeps a confident member from outvoting the rest."""
        m = self.cfg.members
        if m == 1:
            return out
        out = out.view(-1, m, *out.shape[1:])
        if self.cfg.kind == "regression":
            return out.mean(1)
        return torch.logsumexp(torch.log_softmax(out.float(), -1), dim=1) - math.log(m)


class YTuningHead(_Head):
    """Y-Tuning: learned label queries cross-attend to the (frozen, cached) text token features."""

    def __init__(self, cfg: HeadConfig, k: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_in, cfg.width
        self.num_outputs = 1 if cfg.kind == "regression" else cfg.num_labels
        self.num_queries = self.num_outputs * cfg.queries  # each output's queries side by side
        if cfg.layer_mix == "ladder":
            self.mix = None
            # block i reads layer min(i, L-1); each layer read gets its own LayerNorm.
            self.block_layers = [min(i, cfg.num_layers_in - 1) for i in range(cfg.blocks)]
            layers = sorted(set(self.block_layers))
            self.norms_in = nn.ModuleList(LayerNorm(k, h) for _ in layers)
            self.norm_index = {layer: i for i, layer in enumerate(layers)}
        else:
            self.mix = LayerMix(k, cfg.num_layers_in, cfg.layer_mix)
            self.block_layers = None
            self.norms_in = nn.ModuleList([LayerNorm(k, h)])
            self.norm_index = {0: 0}
        self.proj = None if h == d else Linear(k, h, d)
        # Unit scale, like embeddings: at std 0.02 the label queries start nearly identical, and
        # some seeds then never left the majority class on SST-2.
        self.queries = nn.Parameter(torch.randn(k, self.num_queries, d))
        self.blocks = nn.ModuleList(
            _Block(k, d, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.norm_out = LayerNorm(k, d)
        self.score = Linear(k, d, 1)
        if cfg.skip == "pooled":  # a probe inside the head: its own layer mix, LayerNorm and linear map
            self.skip = nn.ModuleList(
                [LayerMix(k, cfg.num_layers_in), LayerNorm(k, h), Linear(k, h, self.num_outputs)]
            )
        # How cross-attention reads the text: "auto" picks the cheaper of "factored" (keys and values
        # folded into the label queries) and "direct" (per-token keys and values). Same function.
        self.attention = "auto"

    @torch.no_grad()
    def init_queries(self, vectors: torch.Tensor) -> None:
        """Initialise every head's label queries, e.g. from the encoder's embeddings of the label names.

        ``vectors`` is [num_labels, d] (copied as is) or [num_labels, H] in the encoder's space (passed
        through each head's input LayerNorm and projection); every query of a label starts there.
        """
        n, d, h = self.num_outputs, self.cfg.width, self.cfg.hidden_in
        if vectors.dim() != 2 or vectors.shape[0] != n or vectors.shape[1] not in (d, h):
            raise UserError(
                f"Label query vectors must be [{n}, {d}] (head width) or [{n}, {h}] (encoder width), "
                f"got {list(vectors.shape)}."
            )
        v = vectors.to(device=self.queries.device, dtype=self.dtype).repeat_interleave(self.cfg.queries, 0)
        v = v.unsqueeze(0)
        if v.shape[-1] != d:
            v = self.norms_in[0](v)
            v = v if self.proj is None else self.proj(v)
        self.queries.copy_(v.expand_as(self.queries))

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

    def forward_layers(self, layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        factored = self._use_factored(layers.shape[1] * layers.shape[2])
        q = self.queries.unsqueeze(1)  # [K, 1, n, d]: the first block broadcasts it over the batch
        memories: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            j = 0 if self.block_layers is None else self.block_layers[i]
            norm = self.norms_in[self.norm_index[j]]
            if j not in memories:
                x = self.mix(layers) if self.block_layers is None else layers[j : j + 1]
                if factored:
                    memories[j] = norm.normalise(x)  # [1, ...] where every head reads the same layer
                else:
                    x = norm(x)
                    memories[j] = x if self.proj is None else self.proj(x)
            q = block(q, memories[j], mask, (norm, self.proj) if factored else None)
        scores = self.score(self.norm_out(q)).squeeze(-1)  # [K, B, n]
        if self.cfg.queries > 1:  # an output's score: the mean of its queries'
            scores = scores.view(*scores.shape[:2], self.num_outputs, -1).mean(-1)
        if self.cfg.skip == "pooled":
            mix, norm, linear = self.skip
            scores = scores + linear(norm(mean_pool(mix(layers), mask)))
        return scores[..., 0] if self.cfg.kind == "regression" else scores


class LinearProbe(_Head):
    """Baseline: layer mix (softmax weights) -> pool (mean over real tokens, or first token) -> LayerNorm -> Linear."""

    def __init__(self, cfg: HeadConfig, k: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.mix = LayerMix(k, cfg.num_layers_in, cfg.layer_mix)
        self.norm = LayerNorm(k, cfg.hidden_in)
        self.linear = Linear(k, cfg.hidden_in, cfg.num_labels)

    def forward_layers(self, layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pool == "first":
            pooled = self.mix(layers[:, :, :1])[:, :, 0]
        else:
            # Pooling and mixing are both linear; mixing first keeps the float copy at [K, B, T, H].
            pooled = mean_pool(self.mix(layers), mask)
        out = self.linear(self.norm(pooled))  # [K, B, labels]
        return out[..., 0] if self.cfg.kind == "regression" else out


def mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[K, B, T, H] -> [K, B, H]: the mean over each row's real tokens."""
    m = mask.to(x.dtype)[None, :, :, None]
    return (x * m).sum(2) / m.sum(2)


def build_head(cfg: HeadConfig, k: int = 1) -> _Head:
    """A stack of ``k`` heads of config ``cfg`` (one head by default), each of its members."""
    return (LinearProbe if cfg.head_type == "probe" else YTuningHead)(cfg, k * cfg.members)


def stack_key(cfg: HeadConfig) -> tuple:
    """Heads with equal keys have parameters of equal shapes and run the same code: they can stack.
    (label_init only decides where the queries start, ema what the trainer scores.)"""
    return tuple(sorted({**cfg.to_dict(), "label_init": None, "ema": None}.items()))


def stack_heads(heads: Sequence[_Head]) -> _Head:
    """One stack holding ``heads`` (stacks of equal shape), each keeping its own parameters."""
    if len({stack_key(h.cfg) for h in heads}) > 1:
        raise ValueError("only heads of one shape stack")
    with torch.device("meta"):  # no initialisation: every parameter comes from the heads
        stack = build_head(heads[0].cfg, sum(h.size for h in heads))
    states = [h.state_dict() for h in heads]
    stack.load_state_dict({name: torch.cat([s[name] for s in states]) for name in states[0]}, assign=True)
    return stack


def head_state(stack: _Head, i: int) -> dict[str, torch.Tensor]:
    """Head i's parameters without the head axis: the checkpoint form, as a head of its own has them
    (an ensemble's with its member axis)."""
    m = stack.cfg.members
    return {name: p[i] if m == 1 else p[i * m : (i + 1) * m] for name, p in stack.state_dict().items()}


def load_head_state(head: _Head, state: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint-form state into a single head."""
    one = head.cfg.members == 1
    head.load_state_dict({name: p.unsqueeze(0) if one else p for name, p in state.items()})


class HeadBank(nn.Module):
    """Named heads trained or run on the same batches: heads of one shape that read the same layers
    form one stack; each stack takes its layers from one layer-major cast of the batch.

    ``layers`` index the L axis of the features passed to ``forward``.
    """

    def __init__(self, heads: Mapping[str, tuple[_Head, Sequence[int]]]) -> None:
        super().__init__()
        groups: dict[tuple, list[str]] = {}
        for name, (head, layers) in heads.items():
            if not name:
                raise UserError("Head names must be non-empty.")
            layers = tuple(int(i) for i in layers)
            if not layers:
                raise UserError(f"Head {name!r} needs at least one layer.")
            if head.cfg.num_layers_in != len(layers):
                raise UserError(
                    f"Head {name!r} expects {head.cfg.num_layers_in} layer(s) but was given {len(layers)}."
                )
            groups.setdefault((stack_key(head.cfg), layers), []).append(name)
        self.stacks = nn.ModuleList()
        self.layers: list[tuple[int, ...]] = []  # per stack
        self.names: list[list[str]] = []  # per stack, in stack order
        self.where: dict[str, tuple[int, int]] = {}  # name -> (stack, position in it)
        for (_, layers), names in groups.items():
            members = [heads[n][0] for n in names]
            self.stacks.append(members[0] if len(members) == 1 else stack_heads(members))
            self.layers.append(layers)
            self.names.append(names)
            for i, name in enumerate(names):
                self.where[name] = (len(self.stacks) - 1, i)

    @classmethod
    def reading(cls, heads: Mapping[str, tuple[_Head, Sequence[int]]]) -> tuple[HeadBank, list[int]]:
        """A bank of heads that each name the hidden states they read, and the sorted union of
        those layers: the features to feed it ([B, T, len(union), H]), read once for all heads."""
        union = sorted({i for _, layers in heads.values() for i in layers})
        return cls({n: (h, [union.index(i) for i in layers]) for n, (h, layers) in heads.items()}), union

    def head(self, name: str) -> tuple[_Head, int]:
        """The stack that holds head ``name``, and its position there."""
        s, i = self.where[name]
        return self.stacks[s], i

    def forward_stacks(
        self, features: torch.Tensor, mask: torch.Tensor, stacks: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Outputs [K * M, B, ...] of the stacks ``stacks`` (default: all), e.g. only those still
        training: every member's, as each learns on its own loss (``combined`` for the heads')."""
        stacks = range(len(self.stacks)) if stacks is None else stacks
        n = features.shape[2]
        major = layer_major(features, next(self.parameters()).dtype)
        selected: dict[tuple[int, ...], torch.Tensor] = {}
        out = {}
        for s in stacks:
            layers = self.layers[s]
            if layers not in selected:
                norm = tuple(resolve_index(i, n) for i in layers)
                if None in norm:
                    raise ValueError(f"heads {self.names[s]} select layers {layers}, features have {n}")
                if norm == tuple(range(norm[0], norm[0] + len(norm))):
                    selected[layers] = major[norm[0] : norm[0] + len(norm)]
                else:
                    selected[layers] = major[list(norm)]
            out[s] = self.stacks[s].forward_layers(selected[layers], mask)
        return out

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's output, by name."""
        return {
            name: out[i]
            for s, out in self.combined(self.forward_stacks(features, mask.bool())).items()
            for i, name in enumerate(self.names[s])
        }

    def combined(self, outputs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """forward_stacks' member outputs as each head's answer (_Head.combine)."""
        return {s: self.stacks[s].combine(out) for s, out in outputs.items()}


__all__ = [
    "YTuningHead",
    "LinearProbe",
    "LayerMix",
    "HeadBank",
    "build_head",
    "stack_heads",
    "head_state",
    "load_head_state",
    "count_parameters",
]

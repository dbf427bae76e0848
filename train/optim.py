"""AdamW for a stack of heads: one optimizer over the stacked parameters, each head its own
learning rate, weight decay, gradient clipping and schedule position.

Each head's slice of every parameter is stepped by torch's fused AdamW kernel, as the head's own
optimizer would step it alone: a head trained in a stack follows the same trajectory as in a run of
its own (up to the float order of the batched products).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.adam import adam


class StackedAdamW:
    def __init__(
        self,
        module: nn.Module,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.lrs, self.weight_decays = list(lrs), list(weight_decays)
        self.betas, self.eps = betas, eps
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        # One step counter per head and parameter: the fused kernel advances each tensor it is given.
        self.steps = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params] for _ in self.lrs
        ]

    @torch.no_grad()
    def step(self, factor: float, active: Sequence[bool], max_norm: float | None = None) -> None:
        """One step of every active head at ``factor`` times its learning rate, its gradient first
        scaled to at most ``max_norm`` over all its parameters (as nn.utils.clip_grad_norm_ would for
        the head alone); inactive heads (stopped early) stay as they are."""
        beta1, beta2 = self.betas
        # Parameters without a gradient (the key bias under factored attention) are skipped, as torch's
        # optimizers skip them.
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in live]
        unscale = [None] * len(active)
        if max_norm is not None:  # the kernel divides the gradient by grad_scale: clipping costs no pass
            norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [P, K]
            total = torch.linalg.vector_norm(norms, dim=0)
            unscale = list((total + 1e-6).div(max_norm).clamp(min=1.0).unbind())
        for k, on in enumerate(active):
            if not on:
                continue
            adam(
                [self.params[i][k] for i in live],
                [g[k] for g in grads],
                [self.exp_avgs[i][k] for i in live],
                [self.exp_avg_sqs[i][k] for i in live],
                [],
                [self.steps[k][i] for i in live],
                fused=True,
                grad_scale=unscale[k],
                decoupled_weight_decay=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=self.lrs[k] * factor,
                weight_decay=self.weight_decays[k],
                eps=self.eps,
                maximize=False,
            )

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {
            "exp_avgs": self.exp_avgs,
            "exp_avg_sqs": self.exp_avg_sqs,
            "steps": [[float(s) for s in head] for head in self.steps],
        }

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(
            self.exp_avgs + self.exp_avg_sqs, state["exp_avgs"] + state["exp_avg_sqs"], strict=True
        ):
            mine.copy_(saved)
        for head, saved in zip(self.steps, state["steps"], strict=True):
            for s, value in zip(head, saved, strict=True):
                s.fill_(value)

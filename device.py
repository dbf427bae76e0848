"""The hardware choices every stage makes the same way: the device, autocast, tokens per batch."""

from __future__ import annotations

import torch

AUTOCASTS = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def pick_device(name: str | None = None) -> torch.device:
    """`name`, else the GPU when there is one."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(device: torch.device, mode: str = "bf16"):
    """On CUDA, autocast to `mode` (bf16: the speed of tensor cores, the range of float32). On CPU
    none: bf16 is slower there, and extracted features must equal transformers' float32 output."""
    dtype = AUTOCASTS[mode] if device.type == "cuda" else None
    return torch.autocast(device.type, dtype) if dtype else torch.autocast(device.type, enabled=False)


def batch_tokens(device: torch.device, given: int | None = None) -> int:
    """Padded tokens per encoder call: `given`, else what fills a GPU, or a CPU's caches."""
    return given or (32768 if device.type == "cuda" else 4096)

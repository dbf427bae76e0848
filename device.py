"""The hardware choices every stage makes the same way: the device, autocast, tokens per batch, and
the process-wide CPU settings a program makes once before training."""

from __future__ import annotations

import ctypes
import os

import numpy as np
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


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; to a GPU from page-locked memory, without waiting for the copy."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def init_distributed(device: str | None) -> str | None:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK): nccl with this
    rank on cuda:LOCAL_RANK where CUDA is asked for or left to choose, else gloo. The device this
    rank then uses."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and device in (None, "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def batch_tokens(device: torch.device, given: int | None = None) -> int:
    """Padded tokens per encoder call: `given`, else what fills a GPU, or a CPU's caches."""
    return given or (32768 if device.type == "cuda" else 4096)


def configure_cpu(threads: int, device: str | None = None) -> None:
    """Settings of the whole process for training heads on a CPU (`device`, as pick_device takes
    it), made by the program that runs (the `ytune` command, a benchmark), never by the library
    behind a user's back: `threads` torch threads, and glibc told to keep freed blocks."""
    if pick_device(device).type != "cpu":
        return
    torch.set_num_threads(threads)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 256 MB for reuse. By default it maps each large block
    afresh and unmaps it when freed, so every step's weight-sized gradients and activations fault
    their pages in again (measured in benchmarks/RESULTS.md 3). Glibc only (elsewhere nothing
    changes); memory stays bounded by the 512 MB trim."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD

"""benchmarks/bench_gpu.py cannot rot: its --tiny mode runs the GPU benchmark's code on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_the_gpu_benchmark_runs_its_code_at_a_tiny_shape(glue):
    run = subprocess.run(
        [sys.executable, SCRIPT, "--tiny", "--rows", "48", "--glue", glue], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and summary["rows"] == 48 and summary["mfu"] is None  # no peak known
    assert summary["tokens"] > 48 * 5  # the 48 training rows and the validation split, real tokens
    assert summary["parameters"] == 2_102_080  # the tiny DeBERTa-v2: 4 layers, 64 wide
    assert summary["bare_tokens"] == summary["tokens"]  # both contenders ran the same batches
    ratio = summary["ytune_tokens_per_s"] / summary["bare_tokens_per_s"]
    assert summary["ytune_vs_bare"] == pytest.approx(ratio, abs=1e-3)  # the ratio is of the figures shown
    assert f"| ytune_vs_bare | {summary['ytune_vs_bare']} |" in run.stderr  # the table shows the same
    assert {"heads_1_examples_per_s", "heads_8_examples_per_s"} <= set(summary)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_the_full_benchmark_refuses_in_one_sentence():
    run = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert (
        run.returncode == 2 and "no CUDA device" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    )

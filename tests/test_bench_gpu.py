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
    assert summary["device"] == "cpu" and summary["rows"] == 48
    assert set(summary["mfu"].values()) == {None}  # no peak known for a CPU
    assert summary["tokens"] > 48 * 5  # the 48 training rows and 64 validation rows, real tokens
    assert summary["parameters"] == 2_102_080  # the tiny DeBERTa-v2: 4 layers, 64 wide
    speeds = summary["tokens_per_s"]
    assert set(speeds) == {"bare eager", "bare auto", "ytune extract float16", "ytune extract int8"}
    floor = summary["floor_tokens_per_s"]
    assert floor == pytest.approx(
        min(max(speeds["bare eager"], speeds["bare auto"]), summary["disk_tokens_per_s"]), abs=0.2
    )
    ratio = speeds["ytune extract float16"] / floor
    assert summary["ytune_vs_floor"] == pytest.approx(ratio, abs=1e-3)  # the ratio is of the figures shown
    assert f"| ytune_vs_floor | {summary['ytune_vs_floor']} |" in run.stderr  # the table shows the same
    assert 0.45 < summary["int8_vs_float16_bytes"] < 0.55  # a tiny cache: headers weigh (test_int8: <= 0.52)
    heads = summary["heads"]
    assert set(heads) == {"1 float16", "8 float16", "32 float16", "1 int8", "1 float16, capped"}
    assert all(h["examples_per_s"] > 0 and h["peak_gib"] is None for h in heads.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_the_full_benchmark_refuses_in_one_sentence():
    run = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert (
        run.returncode == 2 and "no CUDA device" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    )

"""Real commands SIGKILLed part way, for the resume tests."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open


def kill_when(command: list, ready: Callable[[], bool], **popen) -> subprocess.Popen:
    """Run `command` and SIGKILL it as soon as `ready()` holds. No wall-clock deadline: on a busy
    machine it waits longer rather than failing; a job that ends first is the caller's asserts'
    to catch (its returncode is not -SIGKILL, or ready() never held)."""
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        while job.poll() is None and not ready():
            time.sleep(0.005)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    return job


def kill_then_resume(args: list, out: Path, epochs: int) -> subprocess.CompletedProcess:
    """Run `args --out out`, SIGKILL it once its first epoch's state is saved (checking it was cut
    short of `epochs`), then run it again with --resume; returns the resumed run."""
    state = out / "state.safetensors"
    kill_when([*args, "--out", str(out)], state.exists)
    with safe_open(state, "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] < epochs - 1  # killed mid-run
    resumed = subprocess.run([*args, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    return resumed

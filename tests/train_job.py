"""A `ytune train` command killed after its first saved epoch, then resumed (for the resume tests)."""

import json
import signal
import subprocess
import time
from pathlib import Path

from safetensors import safe_open


def kill_then_resume(args: list, out: Path, epochs: int) -> subprocess.CompletedProcess:
    """Run `args --out out`, SIGKILL it once its first epoch's state is saved (checking it was cut
    short of `epochs`), then run it again with --resume; returns the resumed run."""
    job = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    with safe_open(state, "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] < epochs - 1  # killed mid-run
    resumed = subprocess.run([*args, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    return resumed

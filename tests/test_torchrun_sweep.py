"""A sweep under torchrun with 2 gloo ranks on CPU writes the table one process writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ytune

TORCHRUN = Path(sys.executable).parent / "torchrun"
SWEEP = ["--sweep", "lr=5e-4,1e-3", "--sweep", "width=32,64"]  # each rank gets one width: one stack
ARGS = ["--epochs", "2", "--batch-size", "16", "--heads", "2", "--blocks", "1", "--threads", "1"]


def run(launcher: list[str], cache: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(ytune.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "ytune.cli", "train", "--cache", str(cache), "--out", str(out), *SWEEP, *ARGS]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def curve(folder: Path) -> list[dict]:
    """A head's log, epoch by epoch, without its timings."""
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "examples_per_s")} for x in lines]


def test_two_ranks_write_the_table_and_winner_of_one_process(sst2, tmp_path):
    alone = run([sys.executable], sst2, tmp_path / "alone")
    ranks = run([str(TORCHRUN), "--nproc-per-node", "2", "--standalone"], sst2, tmp_path / "ranks")

    def table(folder: Path) -> dict:
        report = json.loads((folder / "sweep.json").read_text())
        report["heads"] = [{k: v for k, v in h.items() if k != "seconds"} for h in report["heads"]]
        return {k: v for k, v in report.items() if k != "seconds"}

    assert table(tmp_path / "ranks") == table(tmp_path / "alone")
    assert len(table(tmp_path / "alone")["heads"]) == 4
    winner = json.loads(alone.stdout.splitlines()[-1])
    assert json.loads(ranks.stdout.splitlines()[-1]) == winner  # every rank prints the same winner
    assert "<- winner" in ranks.stderr and (tmp_path / "ranks" / "sweep.png").stat().st_size > 1000
    for name in (
        h["name"] for h in table(tmp_path / "alone")["heads"]
    ):  # each head where one process puts it
        assert curve(tmp_path / "ranks" / name) == curve(tmp_path / "alone" / name)
        assert (tmp_path / "ranks" / name / "head.safetensors").exists()
    # The sweep's folder stands for its winner in eval, as one process's does.
    ev = subprocess.run(
        [sys.executable, "-m", "ytune.cli", "eval", "--head", str(tmp_path / "ranks"), "--cache", str(sst2)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(ytune.__file__).parents[1])},
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.splitlines()[-1]) == winner["validation"]

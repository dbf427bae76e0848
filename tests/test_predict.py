"""Predict treats its inputs one way: empty texts refused wherever they come from, rows counted from 1
in output and errors alike, and a run's folder of several heads standing for all of them."""

import json
import subprocess
import sys

import pytest

from ytune import HeadSpec, Predictor, TrainConfig, UserError, train

CLI = [sys.executable, "-m", "ytune.cli"]


@pytest.fixture(scope="module")
def run(sst2, tmp_path_factory):
    """A run folder holding three heads side by side, as `ytune train --out` leaves it: one of
    them an ensemble of two members."""
    out = tmp_path_factory.mktemp("run") / "demo"
    heads = [
        HeadSpec("ytuning", "sst2", {"width": 32, "heads": 2}),
        HeadSpec("probe", "sst2", {"head_type": "probe"}),
        HeadSpec("ensemble", "sst2", {"width": 32, "heads": 2, "members": 2}),
    ]
    train(sst2, heads, TrainConfig(epochs=1, batch_size=16, lr=2e-3), out)
    return out


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "predict", *args], capture_output=True, text=True)


def test_a_run_folder_of_several_heads_answers_with_each(run):
    answers = Predictor([run], device="cpu").predict(["a joy"])
    assert set(answers[0]) == {"ytuning", "probe", "ensemble"}
    assert sum(answers[0]["ensemble"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    out = predict("--head", str(run), "a joy")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["predictions"]) == {"ytuning", "probe", "ensemble"}


def test_an_empty_text_is_refused_as_an_argument_as_in_a_file(run, tmp_path):
    with pytest.raises(UserError, match="Row 2 .* empty text"):
        Predictor([run / "probe"], device="cpu").predict(["a joy", "  "])
    given = predict("--head", str(run / "probe"), "a joy", "")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["a joy", ""]) + "\n")
    filed = predict("--head", str(run / "probe"), "--input", str(tmp_path / "in.jsonl"))
    for out in (given, filed):
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "Row 2 " in out.stderr and "empty text" in out.stderr and not out.stdout


def test_output_rows_count_from_1_as_error_rows_do(run):
    out = predict("--head", str(run / "probe"), "a joy", "a bore")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["row"] for line in out.stdout.splitlines()] == [1, 2]

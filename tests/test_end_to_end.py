"""The product as a user meets it: predict with several heads, the demo, errors at the door."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ytune import HeadSpec, Predictor, TrainConfig, UserError, load_glue, open_cache, train
from ytune.cache.writer import CacheWriter
from ytune.train.checkpoint import load_head

CLI = [sys.executable, "-m", "ytune.cli"]


@pytest.fixture(scope="module")
def two_tasks(sst2, tmp_path_factory):
    """Heads of two tasks over the same cached texts: sentiment, and a second label set (length)."""
    sst2 = shutil.copytree(
        sst2, tmp_path_factory.mktemp("copy") / sst2.name
    )  # the shared cache stays as it is
    cache = open_cache(sst2)
    lengths = {
        s: np.array([int(cache.split(s)[r].features.shape[0] > 20) for r in range(len(cache.split(s)))])
        for s in ("train", "validation")
    }
    with CacheWriter(sst2.parent, cache.identity, cache.manifest.backend) as w:
        for split, values in lengths.items():
            w.set_labels(split, "long", values.tolist(), "classification", ["short", "long"], ["accuracy"])
    out = tmp_path_factory.mktemp("heads")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=2e-3)
    train(sst2, [HeadSpec("sentiment", "sst2", {"width": 32, "heads": 2})], cfg, out / "a")
    train(sst2, [HeadSpec("long", "long", {"width": 32, "heads": 2})], cfg, out / "b")
    return [out / "a" / "sentiment", out / "b" / "long"]


def test_predict_answers_every_head_from_one_encoder_pass(two_tasks, glue):
    predictor = Predictor(two_tasks, device="cpu")
    calls = []
    predictor.encoder.model.register_forward_pre_hook(lambda *a: calls.append(1))
    texts = load_glue("sst2", ["validation"], glue, limit=6).splits["validation"].texts
    answers = predictor.predict(texts)
    assert len(calls) == 1 and predictor.encoder_calls == 1  # six short texts: one batch, both heads
    assert all(set(a) == {"sentiment", "long"} for a in answers)
    assert all(a["sentiment"]["label"] in ("negative", "positive") for a in answers)
    assert all(abs(sum(a["long"]["probabilities"].values()) - 1) < 1e-4 for a in answers)


def test_predict_matches_the_head_on_cached_features(two_tasks, sst2, glue):
    """Encoding afresh and reading the cache must give the head the same features."""
    texts = load_glue("sst2", ["validation"], glue, limit=20).splits["validation"].texts
    answers = Predictor(two_tasks[:1], device="cpu").predict(texts)
    head, _ = load_head(two_tasks[0])
    reader = open_cache(sst2).split("validation")
    for row, answer in enumerate(answers):
        features = reader[row].features.unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(
                head(features, torch.ones(features.shape[:2], dtype=torch.bool)).float(), -1
            )[0, 0]  # [K heads, B, labels]
        assert abs(answer["sentiment"]["probabilities"]["positive"] - float(probs[1])) < 2e-3


def test_predict_refuses_heads_that_need_different_encoders(two_tasks, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_tasks[1], other)
    config = json.loads((other / "config.json").read_text())
    config["identity"]["max_length"] = 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="differ in: max_length"):
        Predictor([two_tasks[0], other], device="cpu")


def test_cli_predict_prints_one_json_line_per_input(two_tasks, tmp_path):
    (tmp_path / "in.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ["a joy", "a bore", "fine"]) + "\n"
    )
    out = subprocess.run(
        [
            *CLI,
            "predict",
            "--head",
            str(two_tasks[0]),
            "--head",
            str(two_tasks[1]),
            "--input",
            str(tmp_path / "in.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["a joy", "a bore", "fine"]
    assert [line["row"] for line in lines] == [1, 2, 3]
    assert all(set(line["predictions"]) == {"sentiment", "long"} for line in lines)
    missing = subprocess.run(
        [*CLI, "predict", "--head", str(tmp_path / "nope"), "hello"], capture_output=True, text=True
    )
    assert (
        missing.returncode == 2
        and "not a trained head" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_demo_runs_end_to_end_and_reuses_its_cache(tmp_path, glue):
    args = [
        *CLI,
        "demo",
        "--data-dir",
        str(glue),
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "r"),
        "--train-rows",
        "400",
        "--epochs",
        "1",
    ]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (
        "| ytuning |" in first.stdout and "| probe |" in first.stdout and "cache reused" not in first.stdout
    )
    second = subprocess.run(args, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "0 (cache reused)" in second.stdout


def test_demo_without_data_says_where_to_point_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("YTUNE_GLUE_DIR", None)
    out = subprocess.run(
        [*CLI, "demo", "--data-dir", str(tmp_path / "none"), "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 2 and "--data-dir" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

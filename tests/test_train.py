"""Training on real caches of real GLUE rows (MiniLM features): heads, K-in-one-pass, checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killed_job import kill_then_resume
from safetensors import safe_open
from safetensors.torch import load_file

from ytune import (
    ExtractConfig,
    HeadSpec,
    TrainConfig,
    UserError,
    evaluate,
    extract,
    load_glue,
    open_cache,
    train,
)
from ytune.train.checkpoint import load_head
from ytune.train.stream import default_epochs

CLI = [sys.executable, "-m", "ytune.cli"]


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 2e-3, "buffer_size": 64, **kw})


def test_a_head_trains_and_leaves_a_complete_checkpoint(sst2, tmp_path):
    results = train(
        sst2,
        [HeadSpec("yt", config={"width": 64, "heads": 2})],
        quick(epochs=3),
        tmp_path,
    )
    best = results["yt"]
    assert set(best) == {"accuracy"} and 0.5 < best["accuracy"] <= 1.0
    folder = tmp_path / "yt"
    assert {p.name for p in folder.iterdir()} >= {
        "head.safetensors",
        "config.json",
        "metrics.json",
        "log.jsonl",
        "curves.png",
    }
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1, 2] and all(e["examples_per_s"] > 0 for e in log)
    assert log[-1]["loss"] < log[0]["loss"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["validation"] == best and metrics["tunable_parameters"] > 0
    assert max(e["validation_accuracy"] for e in log) == best["accuracy"]


def test_k_heads_in_one_pass_equal_k_separate_runs(sst2, tmp_path):
    specs = [
        HeadSpec("a", config={"width": 32, "heads": 2, "dropout": 0.0}, layers=[-1]),
        HeadSpec("b", config={"width": 64, "heads": 4, "blocks": 2, "dropout": 0.0}, lr=1e-3),
        HeadSpec("c", config={"head_type": "probe", "dropout": 0.0}, layers=[-2]),
    ]
    together = train(sst2, specs, quick(), tmp_path / "together")
    for spec in specs:
        alone = train(sst2, [spec], quick(), tmp_path / spec.name)
        assert alone[spec.name] == together[spec.name]
        w1 = load_file(tmp_path / spec.name / spec.name / "head.safetensors")
        w2 = load_file(tmp_path / "together" / spec.name / "head.safetensors")
        assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_default_epochs_show_the_heads_about_60000_examples():
    assert [default_epochs(n) for n in (67349, 20000, 8551, 5749, 2490, 300)] == [3, 3, 8, 10, 10, 10]


def test_checkpoint_round_trip_and_eval_reproduce_the_training_metrics(sst2, tmp_path):
    results = train(sst2, [HeadSpec("yt", config={"width": 64, "heads": 2})], quick(), tmp_path)
    head, info = load_head(tmp_path / "yt")
    assert info.label == "sst2" and info.label_names == ["negative", "positive"] and info.layers == [5, 6]
    assert evaluate([tmp_path / "yt"], sst2, "validation") == results
    reader = open_cache(sst2).split("validation")
    features = reader[0].features.unsqueeze(0)
    with torch.no_grad():
        logits = head(features, torch.ones(features.shape[:2], dtype=torch.bool))
    assert logits.shape == (1, 1, 2) and torch.isfinite(logits).all()  # [K heads, B, labels]


def test_a_head_is_refused_on_other_features_and_accepted_on_another_dataset(sst2, tmp_path, encoder, glue):
    train(
        sst2,
        [HeadSpec("yt", config={"width": 32, "heads": 2})],
        quick(epochs=1),
        tmp_path,
    )
    other_rows = load_glue("sst2", ["validation"], glue, limit=50)  # another dataset, same feature space
    same_space = extract(
        other_rows, ExtractConfig(layers=(-1, -2), cache_dir=tmp_path / "c1"), encoder=encoder
    ).path
    assert set(evaluate([tmp_path / "yt"], same_space, "validation")["yt"]) == {"accuracy"}
    shorter = extract(
        other_rows, ExtractConfig(layers=(-2, -1), max_length=16, cache_dir=tmp_path / "c2"), encoder=encoder
    ).path
    with pytest.raises(UserError, match="differs in: max_length"):
        evaluate([tmp_path / "yt"], shorter, "validation")
    fewer_layers = extract(
        other_rows, ExtractConfig(layers=(-1,), cache_dir=tmp_path / "c3"), encoder=encoder
    ).path
    with pytest.raises(UserError, match="holds only"):
        evaluate([tmp_path / "yt"], fewer_layers, "validation")


def test_regression_on_stsb(tmp_path, encoder, glue):
    data = load_glue("stsb", ["train", "validation"], glue, limit=300)
    path = extract(data, ExtractConfig(layers=(-1,), cache_dir=tmp_path / "c"), encoder=encoder).path
    results = train(
        path,
        [HeadSpec("yt", config={"width": 64, "heads": 2}, lr=3e-3), HeadSpec("default")],
        quick(epochs=3, lr=None),
        tmp_path / "r",
    )
    assert set(results["yt"]) == {"pearson", "spearman"}
    assert results["yt"]["pearson"] > 0.3  # 300 rows, 3 epochs: clearly learning, far from chance (0)
    head, info = load_head(tmp_path / "r" / "yt")
    assert info.config.kind == "regression" and info.config.num_labels == 1
    # Unset, a regression head takes the regression defaults (measured on STS-B), lr included.
    _, info = load_head(tmp_path / "r" / "default")
    assert (info.config.width, info.config.blocks, info.config.heads) == (256, 1, 4)
    assert json.loads((tmp_path / "r" / "default" / "metrics.json").read_text())["lr"] == 1e-3
    assert json.loads((tmp_path / "r" / "yt" / "metrics.json").read_text())["lr"] == 3e-3


def test_cli_train_and_eval_print_metrics_last(sst2, tmp_path):
    out = subprocess.run(
        [
            *CLI,
            "train",
            "--cache",
            str(sst2),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--width",
            "32",
            "--heads",
            "2",
            "--head",
            "name=yt",
            "--head",
            "name=probe,head_type=probe",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"yt", "probe"} and set(last["yt"]) == {"accuracy"}
    ev = subprocess.run(
        [*CLI, "eval", "--head", str(tmp_path / "probe"), "--cache", str(sst2), "--split", "validation"],
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1]) == last["probe"]
    bad = subprocess.run(
        [*CLI, "train", "--cache", str(sst2), "--head", "colour=red"], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2
        and "unknown head setting 'colour'" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def test_resume_after_a_kill_ends_with_the_same_metrics(sst2, tmp_path):
    args = [
        *CLI,
        "train",
        "--cache",
        str(sst2),
        "--epochs",
        "8",
        "--batch-size",
        "4",
        "--width",
        "32",
        "--heads",
        "2",
        "--members",  # an ensemble's members and a weight average resume too
        "2",
        "--ema",
        "1",
    ]
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    resumed = kill_then_resume(args, tmp_path / "cut", epochs=8)
    assert json.loads(resumed.stdout.splitlines()[-1]) == json.loads(full.stdout.splitlines()[-1])
    a = load_file(tmp_path / "full" / "ytuning" / "head.safetensors")
    b = load_file(tmp_path / "cut" / "ytuning" / "head.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_reads_no_pickle_and_refuses_other_settings(sst2, tmp_path):
    spec = [HeadSpec("y", config={"width": 32, "heads": 2, "blocks": 1})]
    train(sst2, spec, quick(epochs=1), tmp_path / "run")
    with safe_open(tmp_path / "run" / "state.safetensors", "pt") as f:  # tensors and JSON: nothing to execute
        assert json.loads(f.metadata()["state"])["epoch"] == 0 and "stacks.0.queries" in f.keys()  # noqa: SIM118
    with pytest.raises(UserError, match="other heads or settings"):  # the stream's order depends on workers
        train(sst2, spec, quick(epochs=2, workers=1), tmp_path / "run", resume=True)
    (tmp_path / "run" / "state.safetensors").write_bytes(b"\x80\x04 not a state")
    with pytest.raises(UserError, match="not a resumable training state"):
        train(sst2, spec, quick(epochs=2), tmp_path / "run", resume=True)


def label_cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *CLI,
            "cache",
            "label",
            str(cache),
            "--name",
            "size",
            "--text-field",
            "sentence",
            "--label-field",
            "size",
            *args,
        ],
        capture_output=True,
        text=True,
    )


def size_file(path: Path, texts: list[str]) -> Path:
    """A label file of sentence length (long/short) over `texts`."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "size"])
        w.writerows([t, "long" if len(t.split()) > 12 else "short"] for t in texts)
    return path


def test_a_second_label_set_trains_without_extracting_again(sst2_copy, tmp_path, glue):
    sst2 = sst2_copy
    shards_before = sorted(p.name for p in (sst2 / "train").glob("shard-*"))
    files = []
    for split, limit in (("train", 300), ("validation", 200)):
        # Cleaned and shuffled, as a user's own export would be: rows are joined by text.
        texts = [t.strip() for t in load_glue("sst2", [split], glue, limit=limit).splits[split].texts]
        files += ["--file", f"{split}={size_file(tmp_path / f'{split}.csv', texts[::-1])}"]
    out = label_cli(sst2, *files)
    assert out.returncode == 0, out.stderr
    column = open_cache(sst2).labels("train", "size")
    assert column.names == ["long", "short"] and column.kind == "classification"
    texts = open_cache(sst2).texts("train")[0]
    assert [column.names[v] for v in column.values] == [
        "long" if len(t.split()) > 12 else "short" for t in texts
    ]
    results = train(
        sst2,
        [HeadSpec("size", label="size", config={"width": 32, "heads": 2, "blocks": 1})],
        quick(epochs=8),
        tmp_path / "r",
    )
    assert results["size"]["accuracy"] > 0.8  # sentence length is easy to read off the features
    # Without a label named, heads still learn the column extraction attached.
    train(
        sst2,
        [HeadSpec("plain", config={"width": 32, "heads": 2})],
        quick(epochs=1),
        tmp_path / "p",
    )
    assert load_head(tmp_path / "p" / "plain")[1].label == "sst2"
    assert sorted(p.name for p in (sst2 / "train").glob("shard-*")) == shards_before


def test_a_label_file_that_misses_or_contradicts_cached_rows_is_refused_with_the_row(
    sst2_copy, tmp_path, glue
):
    texts = load_glue("sst2", ["train"], glue, limit=300).splits["train"].texts
    short = label_cli(
        sst2_copy, "--split", "train", "--file", str(size_file(tmp_path / "a.csv", texts[:150]))
    )
    assert short.returncode == 2
    assert (
        f"150 of the 300 rows of split 'train' have no text in {tmp_path / 'a.csv'} (150 rows); the first is row 151: {texts[150]!r}"
        in short.stderr
    )
    twice = tmp_path / "b.csv"
    twice.write_text(size_file(tmp_path / "b.csv", texts).read_text() + f'"{texts[7]}",other\n')
    out = label_cli(sst2_copy, "--split", "train", "--file", str(twice))
    assert (
        out.returncode == 2
        and f"gives the text {texts[7]!r} (row 8 of split 'train') two different labels" in out.stderr
    )
    bare = label_cli(sst2_copy, "--file", str(twice))
    assert bare.returncode == 2 and "say which split(s)" in bare.stderr
    assert open_cache(sst2_copy).manifest.splits["train"].labels.keys() == {"sst2"}  # nothing attached


def test_label_queries_can_start_at_the_label_names(sst2, tmp_path):
    column = open_cache(sst2).labels("train", "sst2")
    assert column.vectors.shape == (2, 2, 384)  # negative/positive through the encoder, layers 5 and 6
    spec = HeadSpec("named", config={"width": 32, "heads": 2, "label_init": "names"})
    train(sst2, [spec], quick(epochs=1, lr=0.0, weight_decay=0.0), tmp_path)
    head, _ = load_head(tmp_path / "named")
    with torch.no_grad():
        expected = head.proj(head.norms_in[0](torch.from_numpy(column.vectors.mean(1))[None]))  # [K = 1, ...]
    torch.testing.assert_close(head.queries.detach(), expected)
    with pytest.raises(UserError, match="label_init=names"):
        train(
            sst2,
            [HeadSpec("p", config={"head_type": "probe", "label_init": "names"})],
            quick(),
            tmp_path / "p",
        )


@pytest.mark.parametrize("workers", [0, 1])
def test_reading_batches_leaves_the_random_state_to_the_heads(sst2, workers):
    # Heads used outside train() draw their dropout from torch's generator; the loader must not, or
    # every epoch and evaluation would shift it (and figures would depend on how often batches are read).
    from ytune.train.stream import batches

    reader = open_cache(sst2).split("train")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rows = [
        r for b in batches(reader, quick(workers=workers), [], [-1], shuffle=True) for r in b.rows.tolist()
    ]
    assert sorted(rows) == list(range(len(reader)))
    assert torch.equal(torch.rand(3), expected)

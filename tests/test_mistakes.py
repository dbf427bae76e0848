"""A user's mistake gets a sentence before work is lost (issue 27): an existing label column is not
overwritten unasked, a cache without labels or without an evaluation split says what to do, eval
scores against a column of another name, a limit that cuts nothing is the whole dataset, and a
wrong or abbreviated flag is refused with its command's usage."""

import copy
import csv
import json
from pathlib import Path

import datasets
import pytest

from ytune import cli
from ytune.cache.reader import open_cache
from ytune.extract import pipeline
from ytune.extract.files import load_files
from ytune.extract.glue import load_glue
from ytune.extract.hf import load_hf
from ytune.train.config import HeadSpec, TrainConfig
from ytune.train.trainer import train


def run(capfd, *argv) -> tuple[int, str, str]:
    """`ytune ARGV` in this process: exit code, stdout, stderr."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture
def bundled(encoder, monkeypatch):
    """`ytune extract` in this process uses a copy of the already loaded encoder: extraction cuts
    the model it is given to the deepest cached layer, and the session's encoder must stay whole."""
    monkeypatch.setattr(pipeline, "load_encoder", lambda *a, **k: copy.deepcopy(encoder))


def write_labels(path: Path, texts: list[str], labels: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "y"])
        w.writerows(zip(texts, labels, strict=True))
    return path


def sentiment_file(cache: Path, split: str, tmp_path: Path) -> Path:
    """The cache's own SST-2 labels of `split`, by name, as a file of texts and labels."""
    c = open_cache(cache)
    column = c.labels(split, "sst2")
    names = [column.names[int(i)] for i in column.values]
    return write_labels(tmp_path / f"{split}.csv", c.texts(split)[0], names)


def label_args(cache: Path, file: Path, name: str, *extra) -> list:
    return [
        "cache",
        "label",
        cache,
        "--file",
        f"validation={file}",
        "--name",
        name,
        "--text-field",
        "text",
    ] + [
        "--label-field",
        "y",
        *extra,
    ]


# 4. ------------------------------------------------------------------------------------------------


def test_cache_label_refuses_to_overwrite_a_column_unless_told(sst2_copy, tmp_path, capfd):
    file = sentiment_file(sst2_copy, "validation", tmp_path)
    before = (sst2_copy / "validation" / "labels" / "sst2.json").read_bytes()
    code, _, err = run(capfd, *label_args(sst2_copy, file, "sst2"))
    assert code == 2 and "already have a label column 'sst2'" in err and "--replace" in err
    assert len(err.strip().splitlines()) == 1
    assert (sst2_copy / "validation" / "labels" / "sst2.json").read_bytes() == before
    code, _, err = run(capfd, *label_args(sst2_copy, file, "sst2", "--replace"))
    assert code == 0, err


# 5. ------------------------------------------------------------------------------------------------


def test_extract_without_labels_says_so_and_train_names_eval_split(bundled, tmp_path, capfd):
    data = write_labels(tmp_path / "train.csv", ["a good film", "a dull film", "fine", "bad"], list("1010"))
    extract = ["extract", "--data", data, "--text-field", "text", "--cache-dir", tmp_path / "caches"]
    code, out, err = run(capfd, *extract)
    assert code == 0, err
    assert "note: no labels were attached (no --label-field); attach them with ytune cache label" in err
    cache = out.strip().splitlines()[-1]

    code, _, err = run(capfd, *extract, "--label-field", "y")
    assert code == 0 and "no labels were attached" not in err

    code, _, err = run(capfd, "train", "--cache", cache, "--out", tmp_path / "run")
    assert code == 2 and "no split 'validation'" in err and "--eval-split" in err


# 6. ------------------------------------------------------------------------------------------------


def test_eval_scores_against_a_label_column_of_another_name(sst2_copy, tmp_path, capfd):
    cfg = TrainConfig(epochs=1, device="cpu")
    train(sst2_copy, [HeadSpec("probe", config={"head_type": "probe"})], cfg, tmp_path / "run")
    file = sentiment_file(sst2_copy, "validation", tmp_path)
    code, _, err = run(capfd, *label_args(sst2_copy, file, "sentiment"))
    assert code == 0, err
    head = ["eval", "--head", tmp_path / "run" / "probe", "--cache", sst2_copy, "--device", "cpu"]
    code, own, err = run(capfd, *head)
    assert code == 0, err
    code, other, err = run(capfd, *head, "--label", "sentiment")
    assert code == 0, err
    assert json.loads(other.splitlines()[-1]) == json.loads(own.splitlines()[-1])
    code, _, err = run(capfd, *head, "--label", "topic")
    assert code == 2 and "no label column 'topic'" in err


# 7. ------------------------------------------------------------------------------------------------


def test_a_limit_that_cuts_no_split_is_the_whole_dataset(glue, tmp_path):
    whole = load_glue("sst2", ["validation"], glue)
    rows = len(whole.splits["validation"])
    for limit in (rows, rows + 1, 10**9):
        ds = load_glue("sst2", ["validation"], glue, limit=limit)
        assert ds.name == "glue/sst2" and ds.splits["validation"] == whole.splits["validation"]
    cut = load_glue("sst2", ["validation"], glue, limit=rows - 1)
    assert cut.name == f"glue/sst2[:{rows - 1}]" and len(cut.splits["validation"]) == rows - 1
    # one split the limit cuts makes the whole dataset another one
    assert load_glue("sst2", ["train", "validation"], glue, limit=rows).name == f"glue/sst2[:{rows}]"

    data = write_labels(tmp_path / "train.csv", ["a", "b", "c"], list("101"))
    assert load_files({"train": data}, "text", label_field="y", limit=3).name == "train"
    assert load_files({"train": data}, "text", label_field="y", limit=2).name == "train[:2]"

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "y": [1, 0, 1]})
    assert load_hf(ds, "text", label_field="y", task="toy", limit=10**9).name == "toy"
    assert load_hf(ds, "text", label_field="y", task="toy", limit=2).name == "toy[:2]"


# 8. ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["train", "--cache", "x", "--epoch", "1"], "usage: ytune train"),
        (["train", "--cache", "x", "--bogus"], "usage: ytune train"),
        (["eval", "--head", "h", "--cache", "x", "--batch", "8"], "usage: ytune eval"),
        (["cache", "ls", "--bogus"], "usage: ytune cache ls"),
        (["extract", "--task", "sst2", "--lim", "4"], "usage: ytune extract"),
    ],
)
def test_a_wrong_or_abbreviated_flag_is_refused_with_its_commands_usage(argv, usage, capfd):
    code, _, err = run(capfd, *argv)
    assert code == 2 and err.startswith(usage)
    flag = next(a for a in reversed(argv) if a.startswith("--"))
    assert f"error: unrecognized arguments: {flag}" in err.strip().splitlines()[-1]


# 10. -----------------------------------------------------------------------------------------------


def test_helps_say_what_is_true(capfd):
    code, out, _ = run(capfd, "train", "--help")
    assert code == 0 and "runs/<cache id>" in " ".join(out.split())
    code, out, _ = run(capfd, "cache", "--help")
    assert code == 0 and out.split("\n\n")[1].startswith("list, inspect, verify or remove caches")


def test_an_interrupted_extract_or_train_says_how_to_resume(sst2, glue, tmp_path, monkeypatch, capfd):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "extract", interrupt)
    monkeypatch.setattr("ytune.train.trainer.train", interrupt)
    extract = ["extract", "--task", "sst2", "--data-dir", glue, "--split", "validation", "--limit", "4"]
    code, _, err = run(capfd, *extract, "--cache-dir", tmp_path)
    assert code == 130 and "interrupted; rerun the same command to resume" in err
    code, _, err = run(capfd, "train", "--cache", sst2, "--out", tmp_path / "run")
    assert code == 130 and "rerun the same command with --resume to resume" in err
    code, _, err = run(capfd, "train", "--cache", sst2, "--out", tmp_path / "run", "--resume")
    assert code == 130 and "rerun the same command to resume" in err

"""Dataset loading: the real GLUE files beside the repository, and small files of every format."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import GLUE as GLUE_DIR  # noqa: E402

from ytune import UserError
from ytune.extract.data import SplitData, text_fingerprint
from ytune.extract.files import load_files
from ytune.extract.glue import GLUE_TASKS, load_glue
from ytune.extract.hf import load_hf

needs_glue = pytest.mark.skipif(
    not (GLUE_DIR / "SST-2" / "train.tsv").is_file(),
    reason=f"the real GLUE folder is not at {GLUE_DIR} (it lives in ../shared beside the repository)",
)


# --------------------------------------------------------------------------------------------------
# GLUE, from the real local folder


@pytest.fixture(scope="module")
def sst2():
    return load_glue("sst2", ["train", "validation", "test"], GLUE_DIR)


@needs_glue
def test_sst2_counts_match_the_official_release(sst2):
    train, dev = sst2.splits["train"], sst2.splits["validation"]
    assert sst2.name == "glue/sst2"
    assert list(sst2.splits) == ["train", "validation", "test"]
    assert len(train.texts) == 67_349 and sum(train.labels) == 37_569
    assert len(dev.texts) == 872 and sum(dev.labels) == 444
    assert train.pairs is None
    assert sst2.task == GLUE_TASKS["sst2"]
    assert sst2.task.label_names == ("negative", "positive")
    # Trailing spaces are kept as the files have them.
    assert train.texts[0] == "hide new secretions from the parental units "


@needs_glue
def test_test_split_has_no_labels(sst2):
    assert sst2.splits["test"].labels is None
    assert len(sst2.splits["test"].texts) == 1821


@needs_glue
def test_cola_headerless_dev_and_headed_test():
    ds = load_glue("cola", ["validation", "test"], GLUE_DIR)
    dev = ds.splits["validation"]
    assert len(dev.texts) == 1043
    assert dev.texts[0] == "The sailors rode the breeze clear of the rocks."
    assert set(dev.labels) == {0, 1}
    assert ds.splits["test"].labels is None and ds.splits["test"].texts[0] == "Bill whistled past the house."
    assert ds.task.metrics == ("mcc",)


@needs_glue
def test_mrpc_pairs_and_bom():
    ds = load_glue("mrpc", ["train", "validation", "test"], GLUE_DIR)
    train = ds.splits["train"]
    assert len(train.texts) == 3668 and len(train.pairs) == 3668
    assert train.texts[0].startswith("Amrozi accused")
    # Bare quotes are text, not CSV quoting (with quoting on, rows would merge and the count drift).
    assert 'called " the witness "' in train.texts[0]
    assert train.pairs[0].startswith("Referring to him")
    assert len(ds.splits["validation"].texts) == 408  # dev.tsv starts with a BOM before "Quality"
    assert ds.splits["test"].labels is None and ds.splits["test"].pairs is not None
    assert ds.task.metrics == ("f1", "accuracy")


@needs_glue
def test_rte_string_labels_map_to_indices():
    ds = load_glue("rte", ["validation"], GLUE_DIR)
    dev = ds.splits["validation"]
    assert ds.task.label_names == ("entailment", "not_entailment")
    assert dev.labels[0] == 1  # the first dev row is "not_entailment"
    assert set(dev.labels) == {0, 1}


@needs_glue
def test_stsb_is_regression_with_float_scores():
    ds = load_glue("stsb", ["train"], GLUE_DIR)
    train = ds.splits["train"]
    assert ds.task.kind == "regression" and ds.task.label_names is None
    assert ds.task.metrics == ("pearson", "spearman")
    assert all(isinstance(v, float) for v in train.labels)
    assert train.labels[:2] == [5.0, 3.8]
    assert min(train.labels) >= 0.0 and max(train.labels) <= 5.0


@needs_glue
def test_limit_keeps_first_rows_and_changes_name(sst2):
    ds = load_glue("SST2", ["train"], GLUE_DIR, limit=100)
    assert ds.name == "glue/sst2[:100]" != sst2.name
    assert ds.splits["train"].texts == sst2.splits["train"].texts[:100]
    assert ds.splits["train"].labels == sst2.splits["train"].labels[:100]


@needs_glue
def test_data_dir_from_environment_and_task_folder(monkeypatch):
    monkeypatch.setenv("YTUNE_GLUE_DIR", str(GLUE_DIR))
    assert len(load_glue("wnli", ["validation"]).splits["validation"].texts) == 71
    assert len(load_glue("wnli", ["validation"], GLUE_DIR / "WNLI").splits["validation"].texts) == 71


@needs_glue
def test_glue_errors_name_the_choices():
    with pytest.raises(UserError, match="sst2"):
        load_glue("sst3", ["train"], GLUE_DIR)
    with pytest.raises(UserError, match="validation"):
        load_glue("sst2", ["dev"], GLUE_DIR)
    with pytest.raises(UserError, match="validation_matched"):
        load_glue("mnli", ["validation"], GLUE_DIR)
    with pytest.raises(UserError, match="does not exist"):  # QNLI's train file is not shipped here
        load_glue("qnli", ["train"], GLUE_DIR)
    with pytest.raises(UserError, match="positive"):
        load_glue("sst2", ["train"], GLUE_DIR, limit=0)


def test_hub_unreachable_is_a_user_error(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("YTUNE_GLUE_DIR", raising=False)
    with pytest.raises(UserError, match=r"unreachable.*--data-dir.*YTUNE_GLUE_DIR"):
        load_glue("sst2", ["train"])
    with pytest.raises(UserError, match="No local GLUE folder SST-2"):
        load_glue("sst2", ["train"], tmp_path)


@needs_glue
def test_fingerprint_stable_and_sensitive(sst2):
    dev = sst2.splits["validation"]
    again = load_glue("sst2", ["validation"], GLUE_DIR).splits["validation"]
    fp = text_fingerprint(dev)
    assert fp == text_fingerprint(again)
    assert len(fp) == 64 and int(fp, 16) >= 0
    texts = list(dev.texts)
    texts[500] = texts[500][:-2] + "X" + texts[500][-1:]
    assert text_fingerprint(replace(dev, texts=texts)) != fp
    # Labels are not part of the text identity.
    assert text_fingerprint(replace(dev, labels=None)) == fp


def test_fingerprint_is_unambiguous():
    a = SplitData(texts=["ab", "c"], pairs=None, labels=None)
    b = SplitData(texts=["a", "bc"], pairs=None, labels=None)
    c = SplitData(texts=["ab", "c"], pairs=["", ""], labels=None)
    d = SplitData(texts=["ab"], pairs=["c"], labels=None)
    prints = {text_fingerprint(x) for x in (a, b, c, d)}
    assert len(prints) == 4
    # A fixed value: the fingerprint is part of every cache id, so it must never drift between runs,
    # machines or versions; changing its format on purpose means updating this value.
    golden = "94ef5a9d73eaa7f1cf24bf84691f7e5a208abcf4a44888d44b8b38697c753259"
    assert text_fingerprint(SplitData(["héllo", "wörld"], ["x", ""], None)) == golden


# --------------------------------------------------------------------------------------------------
# The user's own files

ROWS = [
    {"text": "a fine film", "other": "x, with a comma", "label": "pos"},
    {"text": 'a "quoted" word', "other": "y", "label": "neg"},
    {"text": "tab\tinside", "other": "z", "label": "pos"},
]


def _write(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the extension names, using each format's ordinary writer."""
    import csv

    ext = path.suffix
    if ext in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if ext == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    elif ext == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_loads_the_same(tmp_path, ext):
    train = _write(tmp_path / f"reviews{ext}", ROWS)
    dev = _write(tmp_path / f"dev{ext}", ROWS[:2])
    ds = load_files({"train": train, "validation": dev}, "text", "other", "label")
    assert ds.name == "reviews"
    assert ds.task.kind == "classification"
    assert ds.task.label_names == ("neg", "pos")
    assert ds.task.metrics[0] == "accuracy"
    tr = ds.splits["train"]
    assert tr.texts == [r["text"] for r in ROWS]
    assert tr.pairs == [r["other"] for r in ROWS]
    assert tr.labels == [1, 0, 1]
    assert ds.splits["validation"].labels == [1, 0]


def test_texts_that_look_missing_stay_texts_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes('\ufefftext,label\nNA,1\nnull,0\nNone,1\n"N/A, really",0\n'.encode())
    ds = load_files({"train": path}, "text", label_field="label")
    assert ds.splits["train"].texts == ["NA", "null", "None", "N/A, really"]
    assert ds.splits["train"].labels == [1, 0, 1, 0] and ds.task.label_names == ("0", "1")
    path = tmp_path / "b.jsonl"
    path.write_bytes('\ufeff{"text": "NA", "label": 1}\n{"text": "nan", "label": 0}\n'.encode())
    assert load_files({"train": path}, "text", label_field="label").splits["train"].texts == ["NA", "nan"]


def test_json_rows_load_in_either_shape_whatever_the_extension(tmp_path):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    for name, content in (("l.json", lines), ("j.jsonl", json.dumps(rows, indent=1))):
        (tmp_path / name).write_text(content)
        ds = load_files({"train": tmp_path / name}, "text", label_field="label")
        assert ds.splits["train"].texts == ["a", "b"] and ds.splits["train"].labels == [0, 1]


def test_limit_stops_reading_at_the_limit(tmp_path):
    # The last row is malformed, blocks beyond the first the builder reads (10,000 rows).
    path = tmp_path / "a.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(50_000)) + "a,b,c\n")
    with pytest.raises(UserError, match="a.csv is not a readable CSV file .*Expected 2 fields"):
        load_files({"train": path}, "text", label_field="label")
    ds = load_files({"train": path}, "text", label_field="label", limit=5)
    assert ds.splits["train"].texts == [f"row {i}" for i in range(5)]


def test_files_leave_nothing_in_the_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf")
    for ext in (".csv", ".jsonl", ".parquet"):
        assert len(load_files({"train": _write(tmp_path / f"a{ext}", ROWS)}, "text").splits["train"]) == 3
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_integer_labels_sort_numerically_and_regression_is_inferred(tmp_path):
    rows = [{"t": f"row {i}", "y": y} for i, y in enumerate([10, 2, 9, 2])]
    ds = load_files({"train": _write(tmp_path / "a.jsonl", rows)}, "t", label_field="y", task="mine")
    assert ds.name == "mine" and ds.task.name == "mine"
    assert ds.task.label_names == ("2", "9", "10")
    assert ds.splits["train"].labels == [2, 0, 1, 0]

    rows = [{"t": f"row {i}", "y": y} for i, y in enumerate(["1.5", "3", "0.25"])]
    ds = load_files({"train": _write(tmp_path / "b.csv", rows)}, "t", label_field="y")
    assert ds.task.kind == "regression" and ds.task.label_names is None
    assert ds.splits["train"].labels == [1.5, 3.0, 0.25]


def test_glue_task_name_gives_glue_spec(tmp_path):
    rows = [{"s": "good", "y": "positive"}, {"s": "bad", "y": "0"}]
    ds = load_files({"train": _write(tmp_path / "s.csv", rows)}, "s", label_field="y", task="sst2")
    assert ds.task == GLUE_TASKS["sst2"]
    assert ds.splits["train"].labels == [1, 0]


def test_unlabelled_split_and_limit(tmp_path):
    train = _write(tmp_path / "train.csv", ROWS)
    test = _write(tmp_path / "test.csv", [{"text": r["text"]} for r in ROWS])
    ds = load_files({"train": train, "test": test}, "text", label_field="label", limit=2)
    assert ds.name == "train[:2]"
    assert ds.splits["test"].labels is None
    assert len(ds.splits["train"].texts) == len(ds.splits["test"].texts) == 2


def _err(tmp_path, name: str, rows_or_text, **kw) -> str:
    path = tmp_path / name
    if isinstance(rows_or_text, str):
        path.write_text(rows_or_text, encoding="utf-8")
    else:
        _write(path, rows_or_text)
    files = kw.pop("files", None) or {"train": path}
    with pytest.raises(UserError) as info:
        load_files(files, **{"text_field": "text", "label_field": "label", **kw})
    return str(info.value)


def test_missing_column_lists_present_columns(tmp_path):
    msg = _err(tmp_path, "a.csv", ROWS, text_field="sentence")
    assert "'sentence'" in msg and "text, other, label" in msg
    msg = _err(tmp_path, "b.csv", ROWS, label_field="gold")
    assert "'gold'" in msg and "columns" in msg
    msg = _err(tmp_path, "c.csv", ROWS, text_pair_field="second")
    assert "'second'" in msg


def test_wrong_format_content(tmp_path):
    assert "JSON" in _err(tmp_path, "a.json", "text,label\nhello,pos\n")
    assert "Parquet" in _err(tmp_path, "b.parquet", "text,label\nhello,pos\n")
    assert "JSON" in _err(tmp_path, "c.jsonl", "text,label\nhello,pos\n")
    bad = tmp_path / "d.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert "d.csv" in _err(tmp_path, "x.csv", "", files={"train": bad})
    assert "fields" in _err(tmp_path, "e.csv", "text,label\nhello,pos,extra\n")
    assert "fields" in _err(tmp_path, "e2.csv", "text,label\nhello,pos\nhi,neg,extra\n")
    assert "twice" in _err(tmp_path, "e3.csv", "text,text\nhello,pos\n")
    columns = {"text": ["one", "two"], "label": [1, 0]}  # an object of columns: not rows
    assert "instead of a text" in _err(tmp_path, "e4.json", json.dumps(columns))
    assert "extension" in _err(tmp_path, "f.txt", "hello\n")
    assert "does not exist" in _err(tmp_path, "g.csv", "", files={"train": tmp_path / "nope.csv"})


def test_unknown_label_in_validation(tmp_path):
    train = _write(tmp_path / "train.csv", ROWS)
    dev = _write(tmp_path / "dev.csv", [{**ROWS[0], "label": "meh"}])
    msg = _err(tmp_path, "x.csv", "", files={"train": train, "validation": dev})
    assert "'meh'" in msg and "validation" in msg and "neg, pos" in msg


def test_nan_target_and_missing_label(tmp_path):
    rows = [{"text": "a", "label": 0.5}, {"text": "b", "label": float("nan")}]
    msg = _err(tmp_path, "a.parquet", rows)
    assert "NaN" in msg and "Row 2" in msg
    msg = _err(tmp_path, "b.csv", "text,label\na,0.5\nb,nan\n")
    assert "NaN" in msg and "Row 2" in msg
    msg = _err(tmp_path, "c.csv", "text,label\na,pos\nb,\nc,neg\n")
    assert "Row 2" in msg and "no label" in msg
    msg = _err(tmp_path, "d.csv", "text,label\na,pos\nb,pos\n")
    assert "two" in msg


def test_empty_text_and_empty_file(tmp_path):
    msg = _err(tmp_path, "a.csv", "text,label\na,pos\n   ,neg\n")
    assert (
        "empty" in msg and "Row 2 of " in msg and msg.split(" has ")[0].endswith("a.csv")
    )  # one file: no split named
    msg = _err(tmp_path, "b.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n')
    assert "empty" in msg
    assert "no rows" in _err(tmp_path, "c.csv", "")
    assert "no rows" in _err(tmp_path, "d.csv", "text,label\n")
    assert "no rows" in _err(tmp_path, "e.json", "[]")


# --------------------------------------------------------------------------------------------------
# Hugging Face datasets sources


def saved_dataset(path: Path) -> Path:
    """A DatasetDict written by save_to_disk: ClassLabel names in a non-alphabetical order, texts
    that CSV readers take for missing values, and a test split the hub's way (labels -1)."""
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])}
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["NA", "null", "a fine film", "a dull one"], "label": [0, 0, 0, 1]},
                features=features,
            ),
            "test": datasets.Dataset.from_dict(
                {"sentence": ["unseen", "also unseen"], "label": [-1, -1]}, features=features
            ),
        }
    ).save_to_disk(str(path))
    return path


def test_a_saved_dataset_keeps_its_class_names_and_texts(tmp_path):
    ds = load_hf(saved_dataset(tmp_path / "reviews"), "sentence", label_field="label")
    assert ds.name == "reviews" and ds.task.label_names == ("pos", "neg") and ds.task.kind == "classification"
    assert ds.splits["train"].texts == ["NA", "null", "a fine film", "a dull one"]
    assert ds.splits["train"].labels == [0, 0, 0, 1] and ds.splits["test"].labels is None
    limited = load_hf(tmp_path / "reviews", "sentence", label_field="label", splits=["train"], limit=2)
    assert (
        limited.name == "reviews[:2]"
        and list(limited.splits) == ["train"]
        and limited.splits["train"].texts == ["NA", "null"]
    )


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"text_field": "text"}, ["column 'text' is not in split 'train' of reviews", "sentence, label"]),
        ({"text_field": "sentence", "splits": ["validation"]}, ["no split 'validation'", "train, test"]),
    ],
)
def test_a_saved_dataset_with_a_wrong_column_or_split_is_one_sentence(tmp_path, kw, words):
    with pytest.raises(UserError) as info:
        load_hf(saved_dataset(tmp_path / "reviews"), label_field="label", **kw)
    assert all(w in str(info.value) for w in words), info.value
    with pytest.raises(UserError, match="not a dataset folder written by save_to_disk"):
        load_hf(tmp_path, "sentence")

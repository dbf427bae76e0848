"""Extraction against transformers itself: the real MiniLM and a tiny random DeBERTa-v2."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from common import random_deberta  # noqa: E402
from conftest import GLUE  # noqa: E402
from killed_job import kill_when  # noqa: E402
from transformers import AutoModel, AutoTokenizer

from ytune import ExtractConfig, UserError, extract, load_glue, open_cache
from ytune.cache.store import verify
from ytune.extract.encoder import load_encoder, resolve_layers, resolve_model

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason=f"no GLUE data at {GLUE}")
CLI = [sys.executable, "-m", "ytune.cli"]


def cache_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(path.rglob("*"))
        if f.is_file() and "lock" not in f.name
    }


def reference(model_dir: str, texts, pairs, layers) -> list[torch.Tensor]:
    """What transformers returns, one unpadded row at a time: [tokens, layers, hidden]."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    for i, text in enumerate(texts):
        enc = tok(
            text, pairs[i] if pairs else None, truncation="longest_first", max_length=128, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        out.append(torch.stack([hidden[j][0] for j in layers], dim=1))
    return out


def assert_matches(path: Path, split: str, expected: list[torch.Tensor]) -> None:
    reader = open_cache(path).split(split)
    assert len(reader) == len(expected)
    for row, ref in enumerate(expected):
        got = reader[row].features
        assert got.shape == ref.shape  # real tokens only: no padding stored
        torch.testing.assert_close(got.float(), ref, rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(None, "cpu")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_minilm_features_equal_transformers(tmp_path, minilm, backend):
    data = load_glue("sst2", ["validation"], GLUE, limit=40)
    cfg = ExtractConfig(
        layers=(0, 3, -1), backend=backend, cache_dir=tmp_path, batch_tokens=300, shard_bytes=60_000
    )
    result = extract(data, cfg, encoder=load_encoder(None, "cpu"))
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["identity"]["layers"] == [0, 3, 6]
    assert manifest["splits"]["validation"]["num_shards"] > 1
    texts = data.splits["validation"].texts
    assert_matches(result.path, "validation", reference(resolve_model(None), texts, None, (0, 3, 6)))
    labels = open_cache(result.path).labels("validation", "sst2")
    assert labels.values.tolist() == data.splits["validation"].labels and labels.names == [
        "negative",
        "positive",
    ]


def test_pairs_are_encoded_as_pairs(tmp_path, minilm):
    data = load_glue("mrpc", ["validation"], GLUE, limit=12)
    split = data.splits["validation"]
    result = extract(data, ExtractConfig(layers=(-1,), cache_dir=tmp_path), encoder=minilm)
    expected = reference(resolve_model(None), split.texts, split.pairs, (6,))
    assert_matches(result.path, "validation", expected)
    alone = reference(resolve_model(None), split.texts[:1], None, (6,))[0]
    assert expected[0].shape[0] > alone.shape[0]  # the pair's tokens are there too


def test_tiny_deberta_v2_features_equal_transformers(tmp_path):
    folder = tmp_path / "tiny-deberta"
    random_deberta(
        folder,
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        position_buckets=16,
    )
    data = load_glue("rte", ["validation"], GLUE, limit=10)
    cfg = ExtractConfig(
        model=str(folder), layers=(1, -1), cache_dir=tmp_path / "c", dtype="bfloat16", backend="hdf5"
    )
    result = extract(data, cfg)
    split = data.splits["validation"]
    expected = reference(str(folder), split.texts, split.pairs, (1, 3))
    reader = open_cache(result.path).split("validation")
    for row, ref in enumerate(expected):
        got = reader[row].features
        assert got.dtype == torch.bfloat16 and got.shape == ref.shape
        torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)


def test_the_encoder_runs_no_deeper_than_the_deepest_layer(tmp_path):
    data = load_glue("sst2", ["validation"], GLUE, limit=4)
    encoder = load_encoder(None, "cpu")
    extract(data, ExtractConfig(layers=(2,), cache_dir=tmp_path), encoder=encoder)
    assert len(encoder.model.encoder.layer) == 2
    with pytest.raises(UserError, match="runs only 2 layers .* load it again for hidden state 6"):
        extract(data, ExtractConfig(layers=(-1,), cache_dir=tmp_path), encoder=encoder)


def test_a_killed_extraction_resumes_bit_identical(tmp_path):
    args = [
        "extract",
        "--task",
        "sst2",
        "--data-dir",
        str(GLUE),
        "--split",
        "validation",
        "--limit",
        "300",
        "--shard-mb",
        "0.1",
        "--batch-tokens",
        "512",
        "--layers",
        "-1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(
        [*CLI, *args, "--cache-dir", str(tmp_path / "ref")], capture_output=True, text=True, env=env
    )
    assert ref.returncode == 0, ref.stderr
    ref_path = Path(ref.stdout.strip().splitlines()[-1])
    manifest = tmp_path / "job" / ref_path.name / "manifest.json"

    def committed() -> dict:
        return (
            json.loads(manifest.read_text())["splits"].get("validation", {}).get("shards", {})
            if manifest.exists()
            else {}
        )

    # Killed once some, not all, shards are committed.
    kill_when([*CLI, *args, "--cache-dir", str(tmp_path / "job")], lambda: len(committed()) >= 2, env=env)
    partial = json.loads(manifest.read_text())["splits"]["validation"]
    assert 2 <= len(partial["shards"]) < partial["num_shards"]
    again = subprocess.run(
        [*CLI, *args, "--cache-dir", str(tmp_path / "job")], capture_output=True, text=True, env=env
    )
    assert again.returncode == 0, again.stderr
    assert f"{len(partial['shards'])} shards already cached" in again.stdout
    assert cache_bytes(manifest.parent) == cache_bytes(ref_path)
    assert verify(manifest.parent) == []


def test_two_gloo_ranks_write_the_same_cache_as_one_process(tmp_path):
    args = [
        "extract",
        "--task",
        "mrpc",
        "--data-dir",
        str(GLUE),
        "--split",
        "validation",
        "--limit",
        "60",
        "--shard-mb",
        "0.2",
        "--layers",
        "-1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [*CLI, *args, "--cache-dir", str(tmp_path / "one")], capture_output=True, text=True, env=env
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29577",
            "-m",
            "ytune.cli",
            *args,
            "--cache-dir",
            str(tmp_path / "two"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    path = Path(one.stdout.strip().splitlines()[-1])
    assert two.stdout.strip().splitlines()[-1].endswith(path.name)
    manifest = json.loads((path / "manifest.json").read_text())["splits"]["validation"]
    assert manifest["num_shards"] >= 4
    assert cache_bytes(tmp_path / "two" / path.name) == cache_bytes(path)


def test_bad_layers_and_models_are_one_sentence_errors(tmp_path):
    base = [
        *CLI,
        "extract",
        "--task",
        "sst2",
        "--data-dir",
        str(GLUE),
        "--split",
        "validation",
        "--limit",
        "4",
        "--cache-dir",
        str(tmp_path),
    ]
    bad_layer = subprocess.run([*base, "--layers", "9"], capture_output=True, text=True)
    assert bad_layer.returncode == 2 and "layer 9 is out of range" in bad_layer.stderr
    assert "Traceback" not in bad_layer.stderr
    bad_model = subprocess.run([*base, "--model", str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad_model.returncode == 2 and "cannot load encoder" in bad_model.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_url_cache_dir_is_staged_locally_then_published(tmp_path, minilm, monkeypatch):
    import fsspec

    monkeypatch.setenv("YTUNE_CACHE", str(tmp_path / "local"))
    data = load_glue("sst2", ["validation"], GLUE, limit=8)
    result = extract(data, ExtractConfig(layers=(-1,), cache_dir="memory://bucket/caches"), encoder=minilm)
    cache_id = Path(str(result.path)).name
    assert str(result.path) == f"memory://bucket/caches/{cache_id}"
    fs = fsspec.filesystem("memory")
    assert not (tmp_path / "local" / "staging" / cache_id).exists()  # staged, then removed once published
    local = extract(data, ExtractConfig(layers=(-1,), cache_dir=tmp_path / "ref"), encoder=minilm).path
    published = cache_bytes(local)
    assert published and all(fs.cat(f"/bucket/caches/{cache_id}/{n}") == c for n, c in published.items())
    assert json.loads(fs.cat(f"/bucket/caches/{cache_id}/manifest.json"))["splits"]["validation"]["rows"] == 8


@pytest.mark.parametrize("layers", [["-2,-1"], ["-2", "-1"], ["--layers=-2,-1"]])
def test_negative_layer_lists_are_taken_as_users_type_them(tmp_path, layers):
    flag = [] if layers[0].startswith("--") else ["--layers"]
    args = ["extract", "--task", "sst2", "--data-dir", str(GLUE), "--split", "validation", "--limit", "4"]
    run = subprocess.run(
        [*CLI, *args, *flag, *layers, "--cache-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert open_cache(run.stdout.strip().splitlines()[-1]).identity.layers == (5, 6)  # MiniLM: 6 layers


@pytest.mark.parametrize(
    "num_layers, expected",
    [
        (1, (0, 1)),
        (3, (1, 2)),
        (6, (2, 3, 4)),
        (12, (4, 5, 7, 8)),
        (24, (8, 11, 13, 16)),
        (48, (16, 21, 27, 32)),
    ],
)
def test_the_default_layers_are_at_most_four_spread_over_the_middle_third(num_layers, expected):
    assert resolve_layers(None, num_layers) == expected


def test_extract_takes_a_saved_dataset_and_a_datasetdict(tmp_path, encoder):
    import datasets
    from test_data import saved_dataset

    folder = saved_dataset(tmp_path / "reviews")
    args = ["extract", "--dataset", str(folder), "--text-field", "sentence", "--label-field", "label"]
    run = subprocess.run(
        [*CLI, *args, "--layers", "-1", "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf")},
    )
    assert run.returncode == 0, run.stderr
    cache = open_cache(run.stdout.strip().splitlines()[-1])
    assert cache.identity.dataset == "reviews" and sorted(cache.splits) == ["test", "train"]
    column = cache.labels("train", "reviews")
    assert column.names == ["pos", "neg"] and column.values.tolist() == [0, 0, 0, 1]
    assert not cache.manifest.splits["test"].labels  # the hub's -1 labels: an unlabelled split
    assert not list((tmp_path / "hf").rglob("*.arrow"))  # no second copy under the datasets cache
    cfg = ExtractConfig(layers=(-1,), cache_dir=tmp_path / "api", progress=False)
    api = open_cache(extract(datasets.load_from_disk(str(folder)), cfg, encoder, text_field="sentence").path)
    (name,) = api.manifest.splits["train"].labels
    assert api.labels("train", name).names == ["pos", "neg"]


def test_a_layer_float16_cannot_hold_stops_the_extraction_naming_it(tmp_path):
    """The range check runs in the writer thread (the encoder never waits for its answer): the job
    still stops with one sentence naming the layer, and commits nothing of what it could not store."""
    encoder = load_encoder(None, "cpu")
    with torch.no_grad():
        encoder.model.encoder.layer[1].output.LayerNorm.weight.mul_(1e6)  # hidden state 2 overflows
    data = load_glue("sst2", ["validation"], GLUE, limit=8)
    # no labels: no label vectors, whose check would stop the job before any batch
    data.splits["validation"] = replace(data.splits["validation"], labels=None)
    cfg = ExtractConfig(layers=(1, 2), cache_dir=tmp_path, progress=False)
    for dtype in ("float16", "int8"):
        with pytest.raises(UserError, match="layer 2 holds values that float16 cannot represent"):
            extract(data, replace(cfg, dtype=dtype), encoder=encoder)
    for manifest in tmp_path.glob("*/manifest.json"):
        assert not json.loads(manifest.read_text())["splits"]["validation"]["shards"]
    bf16 = extract(data, replace(cfg, dtype="bfloat16"), encoder=encoder)
    assert open_cache(bf16.path).split("validation")[0].features.float().abs().max() > 65520

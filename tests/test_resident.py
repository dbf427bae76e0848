"""A resident split (features loaded once, batches gathered where they live) gives the stream's
very batches, so heads learn the same whatever `--features` says."""

import json

import numpy as np
import pytest
import torch

from ytune import ExtractConfig, HeadSpec, TrainConfig, UserError, extract, load_glue, open_cache, train
from ytune.cache.resident import ResidentSplit


@pytest.fixture(scope="module")
def int8_cache(encoder, glue, tmp_path_factory):
    data = load_glue("stsb", ["train", "validation"], glue, limit=120)
    cfg = ExtractConfig(
        layers=(-1,), dtype="int8", cache_dir=tmp_path_factory.mktemp("int8"), shard_bytes=60_000
    )
    return extract(data, cfg, encoder=encoder).path


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("which", ["sst2", "int8_cache"])
def test_resident_batches_are_the_streams(request, which, shuffle):
    cache = open_cache(request.getfixturevalue(which))
    reader = cache.split("train")
    label = next(iter(cache.manifest.splits["train"].labels))
    keep = np.arange(len(reader)) % 3 != 0  # a held-out slice, as holdout selection cuts one
    args = {"shuffle": shuffle, "seed": 5, "epoch": 1, "buffer_size": 64, "keep": keep}
    streamed = list(reader.stream(16, labels=[label], layers=[-1], prefetch=0, narrow=True, **args))
    resident = ResidentSplit(reader, [-1], torch.device("cpu"))
    columns = {label: cache.labels("train", label)}
    gathered = list(resident.batches(16, columns, prefetch=0, **args))
    assert len(streamed) == len(gathered) > 1
    for a, b in zip(streamed, gathered, strict=True):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.mask, b.mask)
        assert torch.equal(a.features, b.features) and a.features.dtype == b.features.dtype
        assert (a.scales is None) == (b.scales is None)
        assert a.scales is None or torch.equal(a.scales, b.scales)
        assert torch.equal(a.labels[label], b.labels[label])
    assert sorted(r for b in gathered for r in b.rows.tolist()) == np.flatnonzero(keep).tolist()


def test_heads_learn_the_same_from_a_resident_split_as_from_the_stream(sst2, tmp_path):
    heads = [HeadSpec("y", config={"width": 32, "heads": 2}), HeadSpec("p", config={"head_type": "probe"})]
    runs = {}
    for features in ("stream", "host"):
        cfg = TrainConfig(epochs=2, batch_size=16, features=features, select_on="holdout", progress=False)
        runs[features] = train(sst2, heads, cfg, tmp_path / features)
        history = json.loads((tmp_path / features / "y" / "metrics.json").read_text())["history"]
        runs[features]["losses"] = [h["loss"] for h in history]
    assert runs["host"] == runs["stream"]


def test_features_on_the_gpu_without_one_is_one_sentence(sst2, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="--features gpu needs a CUDA device"):
        train(sst2, [HeadSpec("y")], TrainConfig(epochs=1, features="gpu", progress=False), tmp_path)

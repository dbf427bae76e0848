"""8-bit caches: int8 features with a float16 scale per 64 channels of each token and layer, on real
MiniLM features.

Half the bytes of float16, values within half a quantization step of float16's, and everything
that holds for a 16-bit cache holds for them: the identity tells them apart, chunks are
checksummed, heads train and predict from them, and plain zarr or h5py read them as the format
document shows.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ytune import (
    ExtractConfig,
    HeadSpec,
    Predictor,
    TrainConfig,
    UserError,
    extract,
    load_glue,
    open_cache,
    train,
)
from ytune.cache import store
from ytune.cache.manifest import read_manifest
from ytune.train.checkpoint import load_head

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cache-format.md"
SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}


@pytest.fixture(scope="module")
def caches(encoder, glue, tmp_path_factory):
    """(backend, dtype) -> a cache of SST-2's first 200 training and 100 validation rows."""
    data = load_glue("sst2", ["train", "validation"], glue, limit=200)
    data.splits["validation"] = load_glue("sst2", ["validation"], glue, limit=100).splits["validation"]
    root = tmp_path_factory.mktemp("int8")
    out = {}
    for backend in SUFFIX:
        for dtype in ("float16", "int8"):
            # the last two hidden states: the shared encoder is cut no shallower than other tests need
            cfg = ExtractConfig(
                layers=(-2, -1), dtype=dtype, backend=backend, cache_dir=root / backend, progress=False
            )
            out[backend, dtype] = Path(extract(data, cfg, encoder=encoder).path)
    return out


def shard_bytes(path: Path) -> int:
    return sum(r.bytes for s in read_manifest(path).splits.values() for r in s.shards.values())


@pytest.mark.parametrize("backend", SUFFIX)
def test_int8_takes_at_most_0_52_of_the_float16_bytes_scales_included(caches, backend):
    ratio = shard_bytes(caches[backend, "int8"]) / shard_bytes(caches[backend, "float16"])
    assert 0.45 < ratio <= 0.52
    int8, f16 = read_manifest(caches[backend, "int8"]), read_manifest(caches[backend, "float16"])
    assert int8.identity.dtype == "int8" and int8.cache_id != f16.cache_id  # the identity tells them apart
    assert (int8.format_version, f16.format_version) == (
        3,
        2,
    )  # a float16 cache stays readable by format-2 readers


def test_int8_values_are_within_half_a_step_of_float16(caches):
    f16 = open_cache(caches["zarr", "float16"]).split("train")
    int8 = open_cache(caches["zarr", "int8"]).split("train")
    errors = []
    for row in (0, 17, 199):
        a, b = f16[row].features.float(), int8[row].features
        assert (
            b.dtype == torch.float16 and b.shape == a.shape
        )  # readers return float16, as for float16 caches
        groups = a.unflatten(-1, (6, 64))  # MiniLM's 384 channels: 6 groups of 64, a scale each
        step = (groups.abs().amax(-1, keepdim=True) / 127).expand_as(groups).flatten(-2)
        assert ((b.float() - a).abs() <= step * 0.5 + a.abs() * 2e-3 + 1e-3).all()
        errors.append(float((b.float() - a).norm() / a.norm()))
    assert 0 < max(errors) < 0.015  # rounded, but by about 1% of the features' norm


def test_a_stream_of_an_int8_cache_widens_where_the_batch_is(caches):
    split = open_cache(caches["hdf5", "int8"]).split("train")
    wide = next(iter(split.stream(16, shuffle=False, prefetch=0)))
    narrow = next(iter(split.stream(16, shuffle=False, prefetch=0, narrow=True)))
    assert wide.features.dtype == torch.float16 and wide.scales is None
    assert narrow.features.dtype == torch.int8 and narrow.scales.shape == (*narrow.features.shape[:3], 6)
    assert torch.equal(narrow.widened().features, wide.features)
    row = int(wide.rows[0])
    assert torch.equal(wide.features[0, : len(split[row].features)], split[row].features)


def docs_reader(backend: str) -> str:
    """The format document's reader for `backend`, as a user would copy it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    return next(b for b in blocks if f'manifest["backend"] == "{backend}"' in b)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("backend", SUFFIX)
def test_the_format_documents_readers_read_the_cache_without_ytune(
    caches, backend, dtype, monkeypatch, capsys
):
    path = caches[backend, dtype]
    monkeypatch.setattr(sys, "argv", ["read.py", str(path), "train", "17"])
    scope: dict = {"__name__": "__main__"}
    exec(compile(docs_reader(backend), "read.py", "exec"), scope)  # numpy and zarr or h5py only
    x, ours = scope["x"], open_cache(path).split("train")[17].features.float().numpy()
    assert x.dtype == np.float32 and x.shape == ours.shape
    assert np.allclose(x, ours, rtol=2e-3, atol=2e-3)  # ours multiplies in float16, the reader in float32
    assert "'sst2': " in capsys.readouterr().out


@pytest.mark.parametrize("backend", SUFFIX)
def test_a_flipped_byte_in_the_scales_is_refused(caches, backend, tmp_path):
    import shutil

    path = Path(shutil.copytree(caches[backend, "int8"], tmp_path / caches[backend, "int8"].name))
    shard = path / "train" / f"shard-00000{SUFFIX[backend]}"
    if backend == "zarr":
        victim = next(f for f in (shard / "scales" / "c").rglob("*") if f.is_file())
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        import h5py

        with h5py.File(shard, "r") as f:
            offset = f["scales"].id.get_chunk_info(0).byte_offset
        with open(shard, "r+b") as f:
            f.seek(offset + 8)
            byte = f.read(1)
            f.seek(offset + 8)
            f.write(bytes([byte[0] ^ 0xFF]))
    assert store.verify(path) == [f"train/shard-00000{SUFFIX[backend]}: checksum mismatch"]
    with pytest.raises(UserError, match=r"shard train/shard-00000.*damaged.*cache verify --drop"):
        for _ in open_cache(path).split("train").stream(16, prefetch=0):
            pass


def test_heads_train_and_predict_from_an_int8_cache_as_from_float16(caches, glue, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=2e-3, progress=False)
    spec = [HeadSpec("y", config={"width": 32, "heads": 2})]
    scores = {
        d: train(caches["zarr", d], spec, cfg, tmp_path / d)["y"]["accuracy"] for d in ("float16", "int8")
    }
    assert abs(scores["int8"] - scores["float16"]) <= 0.05  # 100 validation rows: 5 answers
    # Predict encodes afresh and rounds as the cache did: the head sees what it was trained on.
    texts = load_glue("sst2", ["validation"], glue, limit=10).splits["validation"].texts
    answers = Predictor([tmp_path / "int8" / "y"], device="cpu").predict(texts)
    head, _ = load_head(tmp_path / "int8" / "y")
    reader = open_cache(caches["zarr", "int8"]).split("validation")
    for row, answer in enumerate(answers):
        features = reader[row].features.unsqueeze(0)
        with torch.no_grad():
            logits = head(features, torch.ones(features.shape[:2], dtype=torch.bool)).float()
        probs = torch.softmax(logits, -1)[0, 0]
        assert abs(answer["y"]["probabilities"]["positive"] - float(probs[1])) < 2e-3
    metrics = json.loads((tmp_path / "int8" / "y" / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] == scores["int8"]

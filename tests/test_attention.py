"""The fast DeBERTa-v2/v3 path (issue 28): disentangled-flash's encoder, its torch backend on this
CPU, gives transformers' hidden states, in every weights dtype and under autocast, after the layer
list is cut, through a whole extraction; `auto` takes it on a CPU (measured faster there), it is
refused where it cannot run, and without the package `auto` keeps transformers' with one line."""

import logging
import sys

import numpy as np
import pytest
import torch
from common import random_deberta
from conftest import GLUE

from ytune import ExtractConfig, extract, load_glue, open_cache
from ytune.errors import UserError
from ytune.extract.encoder import forward_layers, load_encoder, truncate
from ytune.extract.pipeline import pad, tokenize

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason=f"no GLUE data at {GLUE}")
LAYERS = (0, 1, 2)  # the embeddings, the first layer (with the conv after it), the second


@pytest.fixture(scope="module")
def deberta(tmp_path_factory):
    """A tiny random DeBERTa-v2 with every part the fast path replaces or keeps: relative attention
    both ways over log buckets, shared keys, layer-normed relative embeddings, the conv."""
    folder = tmp_path_factory.mktemp("tiny-deberta")
    random_deberta(
        folder,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        position_buckets=32,
    )
    return str(folder)


def hidden_states(folder: str, attention: str, weights: str, autocast: torch.dtype | None):
    """LAYERS of 16 SST-2 sentences in one padded batch, on a model cut after the deepest, and the
    mask of real tokens."""
    encoder = load_encoder(folder, "cpu", weights, attention)
    truncate(encoder.model, max(LAYERS))
    split = load_glue("sst2", ["validation"], GLUE, limit=16).splits["validation"]
    tok = tokenize(encoder.tokenizer, split, 128)
    assert len(set(tok.lengths.tolist())) > 4  # rows of many lengths: padding in the batch
    inputs, mask = pad(tok, np.arange(16), encoder.tokenizer.pad_token_id, encoder.device)
    amp = torch.autocast("cpu", autocast) if autocast else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), amp:
        return forward_layers(encoder.model, inputs, LAYERS)[mask].float(), encoder


def test_fast_hidden_states_equal_transformers_in_float32(deberta):
    eager, _ = hidden_states(deberta, "eager", "float32", None)
    fast, encoder = hidden_states(deberta, "fast", "float32", None)
    assert type(encoder.model.encoder).__name__ == "DebertaV2OptimizedEncoder"
    assert len(encoder.model.encoder.layer) == max(LAYERS)  # truncate cut the fast encoder too
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "autocast"),
    [("bfloat16", None), ("float16", None), ("float32", torch.bfloat16), ("bfloat16", torch.bfloat16)],
)
def test_in_lower_precision_fast_is_as_close_to_float32_as_transformers(deberta, weights, autocast):
    """The GPU criterion of issue 28, on the torch backend: no further from float32 transformers
    than transformers' own path in the same precision."""
    reference, _ = hidden_states(deberta, "eager", "float32", None)
    eager, _ = hidden_states(deberta, "eager", weights, autocast)
    fast, _ = hidden_states(deberta, "fast", weights, autocast)
    eager_error = (eager - reference).norm(dim=-1) / reference.norm(dim=-1)
    fast_error = (fast - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert fast_error.mean() <= 1.25 * eager_error.mean()
    assert fast_error.max() <= 1.25 * eager_error.max()


def test_a_fast_extraction_stores_what_transformers_gives(deberta, tmp_path):
    """Same cache (the identity does not name the attention path), same features; small batches
    of several padded lengths, so the fast encoder is prepared afresh for each."""
    data = load_glue("sst2", ["validation"], GLUE, limit=24)
    caches = {}
    for attention in ("eager", "fast"):
        cfg = ExtractConfig(
            model=deberta, layers=(1, 2), cache_dir=tmp_path / attention, batch_tokens=96, attention=attention
        )
        caches[attention] = extract(data, cfg).path
    assert caches["eager"].name == caches["fast"].name
    eager, fast = (open_cache(caches[a]).split("validation") for a in ("eager", "fast"))
    assert len(fast) == len(eager) == 24
    for row in range(24):
        torch.testing.assert_close(fast[row].features.float(), eager[row].features.float(), rtol=0, atol=1e-3)


def test_fast_on_an_encoder_that_is_not_deberta_is_one_clear_error(tmp_path, capfd):
    from ytune import cli

    argv = ["extract", "--task", "sst2", "--data-dir", GLUE, "--split", "validation", "--limit", "4"]
    code = cli.main([*map(str, argv), "--attention", "fast", "--cache-dir", str(tmp_path)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        "ytune: error: --attention fast runs DeBERTa-v2/v3 encoders only, not bert: "
        "use --attention auto or eager."
    )
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_auto_on_a_cpu_takes_the_fast_path_and_says_so(deberta, caplog):
    with caplog.at_level(logging.INFO, logger="ytune"):
        encoder = load_encoder(deberta, "cpu")
    assert type(encoder.model.encoder).__name__ == "DebertaV2OptimizedEncoder"
    assert notes(caplog) == ["attention: disentangled-flash, torch backend"]


def test_without_the_package_auto_keeps_transformers_and_fast_is_refused(deberta, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "disentangled_flash", None)  # what `import` meets when not installed
    with caplog.at_level(logging.INFO, logger="ytune"):
        encoder = load_encoder(deberta, "cpu")
    assert type(encoder.model.encoder).__name__ == "DebertaV2Encoder"
    assert notes(caplog) == ["attention: transformers' (disentangled-flash is not installed)"]
    with pytest.raises(UserError, match=r"^--attention fast needs disentangled-flash: pip install"):
        load_encoder(deberta, "cpu", attention="fast")


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ytune.extract.attention"]

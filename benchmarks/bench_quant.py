"""How 8-bit storage rounds real encoder features: the scalings an 8-bit cache could use, compared on
the hidden states ytune caches by default (RESULTS.md 8).

For the first --rows SST-2 training sentences, the encoder's default hidden states (float32, every
real token) are rounded by each scaling and compared with the original: relative error (the norm
of the difference over the norm of the features) and the mean cosine of each token's vector. The
scalings: int8 with one absmax scale per 64 channels of each token and layer (what ytune stores:
no calibration, no clipping), int8 with one scale per token and layer, int8 with one scale per
channel and layer (calibrated on these very rows: optimistic, and a cache would have to fix it
before its first shard), both (channels smoothed by the square root of their absmax, SmoothQuant's
alpha 0.5, then per token), and float8 e4m3 with per-token scales. Also each layer's outlier
channels: the largest channel absmax over the median one.

    python benchmarks/bench_quant.py                               # the bundled MiniLM
    python benchmarks/bench_quant.py --model ~/.cache/ytune-models/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import environment, glue_subset, markdown_table

from ytune.cache.format import from_storage, to_storage
from ytune.device import configure_cpu
from ytune.extract.encoder import default_layers, load_encoder, truncate
from ytune.extract.pipeline import batches, run_encoder, tokenize

HERE = Path(__file__).resolve().parent


def features(model: str | None, rows: int, glue: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[tokens, layers, hidden] float32: the default hidden states of every real token."""
    data = glue_subset("sst2", rows, glue)
    encoder = load_encoder(model, "cpu")
    layers = default_layers(encoder.num_layers)
    truncate(encoder.model, max(layers))
    tok = tokenize(encoder.tokenizer, data.splits["train"], 128)
    order = np.argsort(tok.lengths, kind="stable")
    out = []
    for batch in batches(order, tok.lengths[order], 4096):
        hidden, mask = run_encoder(encoder, tok, batch, layers, "none")
        out.append(hidden[mask].float())
    return torch.cat(out), layers


def int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.round(x / scale).clamp(-127, 127) * scale


def roundings(x: torch.Tensor, layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    channel = x.abs().amax(0)  # [layers, hidden]
    smooth = channel.clamp(min=1e-6).sqrt()
    xs = x / smooth
    e4m3 = x.abs().amax(-1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    return {
        "float16": x.half().float(),
        "int8, per 64 channels of a token (ytune's)": from_storage(
            *to_storage(x, "int8", layers), "int8"
        ).float(),
        "int8, per token": int8(x, x.abs().amax(-1, keepdim=True) / 127),
        "int8, per channel (calibrated here)": int8(x, channel / 127),
        "int8, channels smoothed, then per token": int8(xs, xs.abs().amax(-1, keepdim=True) / 127) * smooth,
        "float8 e4m3, per token": (x / e4m3).to(torch.float8_e4m3fn).float() * e4m3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="an encoder folder (default: the bundled MiniLM)")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--glue", default=str(HERE.parents[1] / "shared/data/glue"))
    p.add_argument("--results", type=Path, default=HERE / "results/quant.jsonl")
    a = p.parse_args()
    configure_cpu(1)
    x, layers = features(a.model, a.rows, a.glue)
    channel = x.abs().amax(0)
    outliers = {int(layer): float(channel[i].max() / channel[i].median()) for i, layer in enumerate(layers)}
    rows, record = [], {}
    for name, y in roundings(x, layers).items():
        err = float((y - x).norm() / x.norm())
        cos = float(torch.nn.functional.cosine_similarity(y.flatten(0, 1), x.flatten(0, 1), dim=-1).mean())
        record[name] = {"relative_error": err, "mean_cosine": cos}
        rows.append([name, f"{err:.4f}", f"{cos:.6f}"])
    print(f"{a.model or 'MiniLM'}: {x.shape[0]} tokens, hidden states {list(layers)}")
    print(
        "largest channel absmax / median channel absmax per layer:",
        {k: round(v, 1) for k, v in outliers.items()},
    )
    print(markdown_table(["rounding", "relative error", "mean cosine"], rows))
    with a.results.open("a") as f:
        line = {
            "model": a.model or "all-MiniLM-L6-v2",
            "rows": a.rows,
            "tokens": x.shape[0],
            "layers": layers,
        }
        f.write(
            json.dumps({**line, "outliers": outliers, "roundings": record, "environment": environment()})
            + "\n"
        )


if __name__ == "__main__":
    main()

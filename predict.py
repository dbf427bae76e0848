"""Prediction on new text: the one place that needs both stages. Each input is encoded once, and
every head answers from the same features.

from ytune.predict import Predictor
    predictor = Predictor(["runs/sst2/ytuning", "runs/size/ytuning"])
    predictor.predict(["a gripping, funny film"])
    # [{"ytuning@sst2": {"label": "positive", "probabilities": {...}}, "ytuning@size": {...}}]

A head folder may also be a sweep's (its winner) or a run's holding several heads (all of them,
each answering by its name). Rows are counted from 1 in errors, as in `ytune predict`'s output and in
the data files' errors; an empty text is refused wherever it comes from, as extraction refuses it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ytune.cache.format import from_storage, to_storage
from ytune.cache.identity import Identity
from ytune.device import batch_tokens as batch_tokens_for
from ytune.errors import UserError
from ytune.extract.columns import check_texts
from ytune.extract.data import SplitData
from ytune.extract.encoder import load_encoder, truncate
from ytune.extract.pipeline import batches, run_encoder, tokenize
from ytune.train.checkpoint import feature_differences, head_folders, load_head
from ytune.train.model import HeadBank


class Predictor:
    """Trained heads plus the one encoder they all need, loaded once."""

    def __init__(
        self,
        head_dirs: Sequence[str | Path],
        model: str | None = None,
        device: str | None = None,
        batch_tokens: int | None = None,
    ) -> None:
        if not head_dirs:
            raise UserError("give at least one trained head (--head DIR).")
        folders = [h for d in head_dirs for h in head_folders(d)]
        loaded = [load_head(d) for d in folders]
        names = [info.name for _, info in loaded]
        if len(set(names)) != len(names):
            names = [
                f"{info.name}@{d.resolve().parent.name}" for (_, info), d in zip(loaded, folders, strict=True)
            ]
        first = Identity.from_dict(loaded[0][1].identity)
        for _, info in loaded[1:]:
            other = Identity.from_dict(info.identity)
            differs = feature_differences(first, other)
            if differs:
                raise UserError(
                    f"heads {info.name!r} and {loaded[0][1].name!r} need different encoders (differ in: {', '.join(differs)})."
                )
        info = loaded[0][1].encoder
        self.encoder = load_encoder(model or info.get("encoder"), device, info.get("weights_dtype"))
        if (self.encoder.fingerprint, self.encoder.tokenizer_fingerprint) != (first.encoder, first.tokenizer):
            raise UserError(
                f"encoder {self.encoder.name!r} is not the one the heads were trained on (its weights or tokenizer differ)."
            )
        device_ = self.encoder.device
        self.bank, self.layers = HeadBank.reading(
            {n: (h.to(device_), info.layers) for n, (h, info) in zip(names, loaded, strict=True)}
        )
        truncate(self.encoder.model, max(self.layers))
        self.max_length, self.dtype = first.max_length, first.dtype
        self.infos = {n: info for n, (_, info) in zip(names, loaded, strict=True)}
        self.batch_tokens = batch_tokens_for(device_, batch_tokens)
        self.encoder_calls = 0  # one per batch, whatever the number of heads

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, progress: bool | None = False
    ) -> list[dict]:
        """One dict per input: for each head its label and class probabilities, or its score."""
        if not texts:
            return []
        check_texts(texts, "text", "the texts to label")
        if pairs:
            check_texts(pairs, "second text", "the texts to label")
        tok = tokenize(
            self.encoder.tokenizer,
            SplitData(list(texts), list(pairs) if pairs else None, None),
            self.max_length,
        )
        order = np.argsort(tok.lengths, kind="stable")
        results: list[dict] = [{} for _ in texts]
        bar = tqdm(
            total=len(texts),
            unit="row",
            desc="predict",
            disable=not progress if progress is not None else None,
            file=sys.stderr,
        )
        for rows in batches(order, tok.lengths[order], self.batch_tokens):
            hidden, mask = run_encoder(self.encoder, tok, rows, self.layers)
            self.encoder_calls += 1
            # as stored in the cache the heads were trained on (an int8 cache's rounding included)
            features = from_storage(*to_storage(hidden, self.dtype, self.layers), self.dtype)
            with torch.inference_mode():
                outputs = self.bank(features, mask)
            for name, out in outputs.items():
                info = self.infos[name]
                out = out.float().cpu()
                for row, value in zip(rows, out, strict=True):
                    results[row][name] = self._answer(info, value)
            bar.update(len(rows))
        bar.close()
        return results

    @staticmethod
    def _answer(info, value: torch.Tensor) -> dict:
        if info.config.kind == "regression":
            return {"score": round(float(value), 5)}
        probabilities = torch.softmax(value, -1).tolist()
        names = info.label_names or [str(i) for i in range(len(probabilities))]
        return {
            "label": names[int(np.argmax(probabilities))],
            "probabilities": {n: round(p, 5) for n, p in zip(names, probabilities, strict=True)},
        }

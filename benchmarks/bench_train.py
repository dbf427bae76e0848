"""Y-Tuning against LoRA and full fine-tuning of the same encoder: cost per epoch, a sweep's cost, accuracy.

All three adapt the bundled all-MiniLM-L6-v2 to the same first N rows of SST-2 train, evaluate on
the full 872-row validation split, and use batch size 32, AdamW (weight decay 0.01, 6% warm-up then
linear decay, gradient clipping at 1.0) and the same torch thread count (--threads, default 1).

- Y-Tuning: the rows are extracted once (untimed in the epoch timings, reported as the one-off
  extraction time: encoder load, tokenization, encoder pass, writing the cache), then `train()` runs
  ytune's default head (HeadSpec("ytuning"), lr 1e-3) on the cache; an epoch's seconds are the
  training seconds ytune records in the head's metrics.json (evaluation excluded).
- LoRA: peft LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1) on
  the encoder, mean pooling over real tokens, a linear classifier; lr 5e-4.
- Full fine-tuning: the same model with every parameter trained; lr 3e-5.

LoRA and full fine-tuning see the same token ids (max_length 128, truncation longest_first), tokenized
once beforehand, in batches built as ytune's reader builds them: each epoch the rows are shuffled,
taken in pools of 16 batches, each pool sorted by length and cut into batches of 32, the batches of a
pool shuffled; every batch is padded to its longest row (dynamic padding). Their epoch seconds cover
the training loop only (padding, forward, backward, optimizer), as ytune's do.

Three parts:
1. Cost per epoch: one epoch of each contender (and of 8 Y-Tuning heads in one pass), fresh each
   time, interleaved over --repeats rounds (the order reversed every other round); medians.
2. A 10-epoch sweep of 8 heads: Y-Tuning = extraction (measured) + 10 x the 8-head one-pass epoch
   (measured for 1 epoch, extrapolated); LoRA = 80 x the LoRA epoch (measured, extrapolated).
3. Accuracy: each contender trained --epochs epochs, evaluated after each; best validation accuracy.
   Y-Tuning and the probe train in one pass, under --seeds seeds (default 3: they take seconds);
   seed 0, the seed of the LoRA and full runs, is the headline, the others show the spread.

    python benchmarks/bench_train.py --quick                 # 500 rows, 1 epoch, 2 repeats
    python benchmarks/bench_train.py --out results.json      # 2,000 rows, 3 epochs, 2 repeats
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import environment, markdown_table, write_json
from torch import nn

from ytune.extract.data import TextDataset, load_glue
from ytune.extract.encoder import resolve_model
from ytune.extract.pipeline import TRUNCATION, ExtractConfig, extract
from ytune.train.trainer import HeadSpec, TrainConfig, train

BATCH = 32
BUCKET = 16  # batches per length-sorted pool, as ytune's reader
MAX_LENGTH = 128
WEIGHT_DECAY, WARMUP, CLIP = 0.01, 0.06, 1.0
LORA = dict(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1)
BASELINE_LR = {"lora": 5e-4, "full": 3e-5}
SWEEP_LRS = (2.5e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3)  # the 8 heads of one pass
SWEEP_EPOCHS = 10
GOAL_RATIO, GOAL_ACCURACY = 20.0, 96.0


# ------------------------------------------------------------------------------------------------
# Data


def load_data(rows: int, glue: str) -> TextDataset:
    """The first `rows` rows of SST-2 train and the whole validation split."""
    data = load_glue("sst2", ["train", "validation"], glue, limit=rows)
    data.splits["validation"] = load_glue("sst2", ["validation"], glue).splits["validation"]
    return data


def tokenize(tokenizer, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    ids = tokenizer(texts, truncation=TRUNCATION, max_length=MAX_LENGTH)["input_ids"]
    return ids, np.array([len(x) for x in ids])


def train_batches(lengths: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """ytune's shuffled batching: pools of BUCKET batches, sorted by length, cut, batches shuffled."""
    order, out = rng.permutation(len(lengths)), []
    for start in range(0, len(order), BATCH * BUCKET):
        pool = sorted(order[start : start + BATCH * BUCKET], key=lambda i: lengths[i])
        cuts = range(0, len(pool), BATCH)
        out += [pool[c : c + BATCH] for c in rng.permutation(cuts)]
    return out


def collate(ids: list[list[int]], rows: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids[r]) for r in rows)
    x = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(ids[r])] = torch.tensor(ids[r])
        mask[i, : len(ids[r])] = 1
    return x, mask


# ------------------------------------------------------------------------------------------------
# LoRA and full fine-tuning


class MeanPoolClassifier(nn.Module):
    """Encoder -> mean over real tokens -> linear classifier."""

    def __init__(self, encoder: nn.Module, hidden: int, labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(hidden, labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.linear((h * m).sum(1) / m.sum(1))


class Baseline:
    """LoRA or full fine-tuning of the encoder on pre-tokenized rows."""

    def __init__(self, path: str, train: tuple, val: tuple, seed: int = 0) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # No pooler: mean pooling is the classifier's input, so the pooler would be dead weight.
        self.encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.pad = self.tokenizer.pad_token_id or 0
        self.train_texts, self.train_labels = train
        self.val_texts, self.val_labels = val
        self.train_ids, self.train_lengths = tokenize(self.tokenizer, self.train_texts)
        self.val_ids, self.val_lengths = tokenize(self.tokenizer, self.val_texts)
        self.seed = seed

    def build(self, method: str) -> tuple[nn.Module, list[nn.Parameter]]:
        torch.manual_seed(self.seed)
        encoder = copy.deepcopy(self.encoder)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            encoder = get_peft_model(encoder, LoraConfig(**LORA))
        else:
            encoder.requires_grad_(True)
        model = MeanPoolClassifier(encoder, self.encoder.config.hidden_size, 2)
        return model, [p for p in model.parameters() if p.requires_grad]

    def fit(self, method: str, epochs: int, evaluate: bool) -> dict:
        """Train `epochs` epochs; each epoch's training seconds (and validation accuracy if asked)."""
        model, params = self.build(method)
        optimizer = torch.optim.AdamW(params, lr=BASELINE_LR[method], weight_decay=WEIGHT_DECAY)
        steps = epochs * math.ceil(len(self.train_ids) / BATCH)
        warm = max(1, int(WARMUP * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
        )
        labels = torch.tensor(self.train_labels, dtype=torch.long)
        history = []
        for epoch in range(epochs):
            model.train()
            batches = train_batches(self.train_lengths, np.random.default_rng([self.seed, epoch]))
            start, seen, total = time.perf_counter(), 0, 0.0
            for rows in batches:
                ids, mask = collate(self.train_ids, rows, self.pad)
                loss = F.cross_entropy(model(ids, mask), labels[rows])
                loss.backward()
                nn.utils.clip_grad_norm_(params, CLIP)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                total += float(loss.detach()) * len(rows)
                seen += len(rows)
            seconds = time.perf_counter() - start
            entry = {
                "epoch": epoch,
                "loss": total / seen,
                "seconds": seconds,
                "examples_per_s": seen / seconds,
            }
            if evaluate:
                start = time.perf_counter()
                entry["validation_accuracy"] = self.accuracy(model)
                entry["eval_seconds"] = time.perf_counter() - start
            history.append(entry)
        return {"tunable_parameters": sum(p.numel() for p in params), "history": history}

    @torch.inference_mode()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        order = np.argsort(self.val_lengths, kind="stable")
        correct = 0
        for start in range(0, len(order), 128):
            rows = list(order[start : start + 128])
            ids, mask = collate(self.val_ids, rows, self.pad)
            pred = model(ids, mask).argmax(-1).numpy()
            correct += int((pred == np.asarray(self.val_labels)[rows]).sum())
        return correct / len(order)


# ------------------------------------------------------------------------------------------------
# Y-Tuning


def ytune_run(
    cache: Path, specs: list[HeadSpec], epochs: int, threads: int, out: Path, seed: int = 0
) -> dict:
    """`train()` on the cache; every head's metrics.json, and the call's wall seconds."""
    start = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, threads=threads, progress=False, seed=seed)
    train(cache, specs, cfg, out, log=lambda m: None)
    wall = time.perf_counter() - start
    metrics = {s.name: json.loads((out / s.name / "metrics.json").read_text()) for s in specs}
    return {"wall_s": wall, "heads": metrics}


def ytune_epoch(cache: Path, k: int, threads: int, out: Path) -> dict:
    """One epoch of 1 default head, or of K default heads differing in lr, in one pass."""
    specs = (
        [HeadSpec("ytuning")] if k == 1 else [HeadSpec(f"h{i}", lr=lr) for i, lr in enumerate(SWEEP_LRS[:k])]
    )
    run = ytune_run(cache, specs, 1, threads, out)
    first = next(iter(run["heads"].values()))
    return {
        "seconds": first["history"][0]["seconds"],
        "wall_s": run["wall_s"],
        "tunable_parameters": sum(m["tunable_parameters"] for m in run["heads"].values()),
        "encoder_parameters": first["encoder_parameters"],
    }


# ------------------------------------------------------------------------------------------------


def fmt_int(n: int) -> str:
    return f"{n:,}"


def spread(values: list[float] | None) -> str:
    if not values:
        return "- (seed 0 only)"
    return " / ".join(f"{100 * v:.2f}" for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument("--rows", type=int, help="SST-2 training rows (default 2,000; --quick 500)")
    p.add_argument("--epochs", type=int, help="epochs of the accuracy runs (default 3; --quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every contender (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the epoch timings")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the Y-Tuning and probe accuracy runs")
    p.add_argument("--layers", default="-4,-3,-2,-1", help="hidden states to cache, e.g. --layers=-1")
    p.add_argument("--quick", action="store_true", help="500 rows, 1 epoch")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    rows = a.rows or (500 if a.quick else 2000)
    epochs = a.epochs or (1 if a.quick else 3)
    repeats = max(1, a.repeats)
    layers = tuple(int(x) for x in a.layers.split(","))
    torch.set_num_threads(a.threads)  # extraction and the baselines; train() sets the same itself
    t0 = time.perf_counter()

    data = load_data(rows, a.glue)
    split_train, split_val = data.splits["train"], data.splits["validation"]
    path = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ex = extract(data, ExtractConfig(layers=layers, cache_dir=tmp / "cache", progress=False))
        cache = Path(ex.path)
        print(f"extraction: {ex.summary()}", flush=True)
        base = Baseline(path, (split_train.texts, split_train.labels), (split_val.texts, split_val.labels))

        # 1. Cost per epoch, interleaved.
        names = ["ytuning", "ytuning x8", "lora", "full"]
        timings: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                if name == "ytuning":
                    t = ytune_epoch(cache, 1, a.threads, tmp / f"y1-{r}")
                elif name == "ytuning x8":
                    t = ytune_epoch(cache, len(SWEEP_LRS), a.threads, tmp / f"y8-{r}")
                else:
                    fit = base.fit(name, 1, evaluate=False)
                    t = {
                        "seconds": fit["history"][0]["seconds"],
                        "tunable_parameters": fit["tunable_parameters"],
                    }
                timings[name].append(t)
                print(f"round {r} {name}: {t['seconds']:.2f} s", flush=True)

        # 3. Accuracy (run before the tables so all the work is done first).
        # Y-Tuning and the probe train in one pass; they are cheap, so also under other seeds (init,
        # shuffle, dropout): seed 0, the baselines' seed, is the headline, the others show the spread.
        acc_seeds = [
            ytune_run(
                cache,
                [HeadSpec("ytuning"), HeadSpec("probe", config={"head_type": "probe"})],
                epochs,
                a.threads,
                tmp / f"accuracy-{seed}",
                seed,
            )
            for seed in range(max(1, a.seeds))
        ]
        acc_y = acc_seeds[0]
        print("accuracy: ytuning and probe done", flush=True)
        acc_b = {}
        for name in ("lora", "full"):
            acc_b[name] = base.fit(name, epochs, evaluate=True)
            print(f"accuracy: {name} done", flush=True)
        train_tokens = int(base.train_lengths.sum())

    encoder_params = timings["ytuning"][0]["encoder_parameters"]
    med = {n: statistics.median(t["seconds"] for t in timings[n]) for n in names}
    params = {n: timings[n][0]["tunable_parameters"] for n in names}
    labels = {
        "ytuning": "Y-Tuning (default head)",
        "ytuning x8": "Y-Tuning, 8 heads in one pass",
        "lora": "LoRA r=8 (query, value)",
        "full": "full fine-tuning",
    }
    cost_rows = [
        [
            labels[n],
            fmt_int(params[n]),
            f"{100 * params[n] / encoder_params:.2f}%",
            f"{med[n]:.2f}",
            ", ".join(f"{t['seconds']:.2f}" for t in timings[n]),
            f"{rows / med[n]:.0f}",
            f"{med[n] / med['ytuning']:.1f}x",
        ]
        for n in names
    ]
    cost_table = markdown_table(
        [
            "contender",
            "tunable params",
            "of encoder",
            "median s/epoch",
            "runs s",
            "examples/s",
            "vs Y-Tuning",
        ],
        cost_rows,
    )
    lora_ratio, full_ratio = med["lora"] / med["ytuning"], med["full"] / med["ytuning"]

    # 2. Sweep: 8 heads x 10 epochs.
    y_sweep = ex.seconds + SWEEP_EPOCHS * med["ytuning x8"]
    lora_sweep = len(SWEEP_LRS) * SWEEP_EPOCHS * med["lora"]
    full_sweep = len(SWEEP_LRS) * SWEEP_EPOCHS * med["full"]
    sweep_rows = [
        ["Y-Tuning: extraction, once", "measured", f"{ex.seconds:.1f}"],
        [
            f"Y-Tuning: 8 heads in one pass x {SWEEP_EPOCHS} epochs",
            f"measured 1 epoch ({med['ytuning x8']:.2f} s), x {SWEEP_EPOCHS} extrapolated",
            f"{SWEEP_EPOCHS * med['ytuning x8']:.1f}",
        ],
        ["**Y-Tuning sweep total**", "", f"**{y_sweep:.1f}**"],
        [
            f"LoRA: 8 runs x {SWEEP_EPOCHS} epochs",
            f"measured 1 epoch ({med['lora']:.2f} s), x {len(SWEEP_LRS) * SWEEP_EPOCHS} extrapolated",
            f"**{lora_sweep:.1f}**",
        ],
        [
            f"full fine-tuning: 8 runs x {SWEEP_EPOCHS} epochs",
            f"measured 1 epoch ({med['full']:.2f} s), x {len(SWEEP_LRS) * SWEEP_EPOCHS} extrapolated",
            f"**{full_sweep:.1f}**",
        ],
    ]
    sweep_table = markdown_table(["part", "how", "seconds"], sweep_rows)

    # 3. Accuracy table.
    acc: dict[str, dict] = {}
    for name in ("ytuning", "probe"):
        m = acc_y["heads"][name]
        secs = [h["seconds"] for h in m["history"]]
        acc[name] = {
            "accuracy": m["validation"]["accuracy"],
            "best_epoch": m["best_epoch"],
            "tunable_parameters": m["tunable_parameters"],
            "s_per_epoch": statistics.median(secs),
            "history": m["history"],
            "seeds": [run["heads"][name]["validation"]["accuracy"] for run in acc_seeds],
        }
    for name, fit in acc_b.items():
        hist = fit["history"]
        best = max(range(len(hist)), key=lambda i: hist[i]["validation_accuracy"])
        acc[name] = {
            "accuracy": hist[best]["validation_accuracy"],
            "best_epoch": best,
            "tunable_parameters": fit["tunable_parameters"],
            "s_per_epoch": statistics.median(h["seconds"] for h in hist),
            "history": hist,
        }
    full_acc = acc["full"]["accuracy"]
    acc_labels = {
        "ytuning": "Y-Tuning (default head)",
        "probe": "linear probe",
        "lora": "LoRA r=8",
        "full": "full fine-tuning",
    }
    acc_rows = [
        [
            acc_labels[n],
            fmt_int(acc[n]["tunable_parameters"]),
            f"{100 * acc[n]['tunable_parameters'] / encoder_params:.3f}%",
            f"{100 * acc[n]['accuracy']:.2f}",
            acc[n]["best_epoch"],
            f"{100 * acc[n]['accuracy'] / full_acc:.1f}%",
            f"{acc[n]['s_per_epoch']:.2f}",
            spread(acc[n].get("seeds")),
        ]
        for n in ("ytuning", "probe", "lora", "full")
    ]
    acc_table = markdown_table(
        [
            "method",
            "tunable params",
            "of encoder",
            "val accuracy %",
            "best epoch",
            "of full FT",
            "s/epoch (this run)",
            f"seeds 0-{len(acc_seeds) - 1}: min / median / max %",
        ],
        acc_rows,
    )
    y_share = 100 * acc["ytuning"]["accuracy"] / full_acc
    y_share_median = 100 * statistics.median(acc["ytuning"]["seeds"]) / full_acc
    lora_eval = statistics.median(h["eval_seconds"] for h in acc["lora"]["history"])

    print()
    print(
        f"## SST-2, first {rows:,} train rows ({train_tokens:,} tokens), full validation "
        f"({len(split_val)} rows); all-MiniLM-L6-v2 ({encoder_params:,} parameters); "
        f"batch {BATCH}; torch threads {a.threads}; cached layers {list(layers)}"
    )
    print()
    print(f"### 1. Cost per epoch (median of {repeats} interleaved rounds; evaluation excluded)")
    print()
    print(cost_table)
    print()
    print(
        f"One-off extraction (encoder load, tokenization, {ex.rows:,} rows / {ex.tokens:,} tokens through "
        f"the encoder, cache write; train + validation): {ex.seconds:.1f} s, {ex.bytes / 1e6:.1f} MB."
    )
    print(
        f"LoRA / Y-Tuning: {lora_ratio:.1f}x, full / Y-Tuning: {full_ratio:.1f}x per epoch "
        f"(goal: LoRA >= {GOAL_RATIO:.0f}x Y-Tuning: {'met' if lora_ratio >= GOAL_RATIO else 'MISSED'})."
    )
    print()
    print(
        f"### 2. A {SWEEP_EPOCHS}-epoch sweep of {len(SWEEP_LRS)} heads (lr {', '.join(f'{x:g}' for x in SWEEP_LRS)})"
    )
    print()
    print(sweep_table)
    print()
    print(
        f"LoRA sweep / Y-Tuning sweep: {lora_sweep / y_sweep:.1f}x; full / Y-Tuning: {full_sweep / y_sweep:.1f}x "
        "(per-epoch evaluation excluded on both sides; "
        f"one LoRA validation pass measured {lora_eval:.1f} s, so evaluating after every epoch would add "
        f"{len(SWEEP_LRS) * SWEEP_EPOCHS * lora_eval:.0f} s to LoRA's sweep)."
    )
    print()
    print(f"### 3. Accuracy after {epochs} epoch(s) on the {rows:,} rows (best validation epoch, 0-based)")
    print()
    print(acc_table)
    print()
    print(
        f"Y-Tuning / full fine-tuning: {y_share:.1f}% "
        f"(goal >= {GOAL_ACCURACY:.0f}%: {'met' if y_share >= GOAL_ACCURACY else 'MISSED'}); "
        f"median over the {len(acc_seeds)} seeds: {y_share_median:.1f}% "
        f"({'met' if y_share_median >= GOAL_ACCURACY else 'MISSED'}). LoRA and full fine-tuning: seed 0 only."
    )
    total_s = time.perf_counter() - t0
    print(f"\n(benchmark wall time {total_s:.0f} s)")

    write_json(
        a.out,
        {
            "environment": environment(),
            "settings": {
                "rows": rows,
                "validation_rows": len(split_val),
                "epochs": epochs,
                "threads": a.threads,
                "repeats": repeats,
                "seeds": len(acc_seeds),
                "layers": list(layers),
                "batch_size": BATCH,
                "batching": "shuffled, pools of 16 batches sorted by length, dynamic padding (all contenders)",
                "max_length": MAX_LENGTH,
                "lora": LORA,
                "lr": {"ytuning": TrainConfig().lr, **BASELINE_LR},
                "sweep_lrs": SWEEP_LRS,
                "encoder_parameters": encoder_params,
                "train_tokens": train_tokens,
            },
            "extraction": {
                "seconds": ex.seconds,
                "rows": ex.rows,
                "tokens": ex.tokens,
                "bytes": ex.bytes,
            },
            "epoch_cost": {
                "runs": timings,
                "median_s": med,
                "tunable_parameters": params,
                "lora_over_ytuning": lora_ratio,
                "full_over_ytuning": full_ratio,
                "goal_ratio": GOAL_RATIO,
            },
            "sweep": {
                "heads": len(SWEEP_LRS),
                "epochs": SWEEP_EPOCHS,
                "ytuning_s": y_sweep,
                "lora_s": lora_sweep,
                "full_s": full_sweep,
                "measured": ["extraction", "1 epoch of 8 heads in one pass", "1 LoRA epoch", "1 full epoch"],
                "extrapolated": ["x10 epochs (Y-Tuning)", "x80 epochs (LoRA, full)"],
            },
            "accuracy": {
                **acc,
                "ytuning_over_full_pct": y_share,
                "ytuning_over_full_pct_seed_median": y_share_median,
                "lora_eval_s": lora_eval,
                "goal_pct": GOAL_ACCURACY,
                "ytuning_wall_s": acc_y["wall_s"],
            },
            "wall_s": total_s,
        },
    )


if __name__ == "__main__":
    main()

"""Y-Tuning against LoRA and full fine-tuning of the same encoder: cost per epoch, a sweep's cost, accuracy.

Every contender adapts the bundled all-MiniLM-L6-v2 to the same first N training rows of a GLUE task
(--rows, default 2,000), is evaluated on the task's whole validation split, and uses batch size 32,
AdamW (weight decay 0.01, 6% warm-up then linear decay, gradient clipping at 1.0) and the same torch
thread count (--threads, default 1).

- Y-Tuning: the rows are extracted once (untimed in the epoch timings, reported as the one-off
  extraction time: encoder load, tokenization, encoder pass, writing the cache), then `train()` runs
  ytune's default head (HeadSpec("ytuning"), ytune's default lr) on the cache; an epoch's seconds are
  the training seconds ytune records in the head's metrics.json (evaluation excluded).
- Linear probe (accuracy only): HeadSpec("probe", config={"head_type": "probe"}, lr=1e-3), trained in
  the same pass over the cache as the Y-Tuning head.
- LoRA: peft LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1) on the query and value projections of
  the encoder, mean pooling over real tokens, a linear layer (one output per class, one output for
  a regression task); lr 5e-4.
- Full fine-tuning: the same model with every parameter trained; lr 3e-5.

LoRA and full fine-tuning see the token ids ytune's extraction feeds the encoder (ytune's own
`tokenize`: sentence pairs as pairs with their token type ids, max_length 128, truncation
longest_first), tokenized once beforehand, in batches built as ytune's reader builds them: each
epoch the rows are shuffled, taken in pools of 16 batches, each pool sorted by length and cut into
batches of 32, the batches of a pool shuffled; every batch is padded to its longest row (dynamic
padding). Their epoch seconds cover the training loop only (padding, forward, backward, optimizer),
as ytune's do. Classification trains with cross-entropy, regression (STS-B) with MSE on the raw
score, as ytune's heads do. Every method is scored by ytune.train.metrics.compute_metrics with the
task's metrics; the first (accuracy for SST-2 and RTE, F1 for MRPC, MCC for CoLA, Pearson for
STS-B) is the headline and picks each method's best validation epoch.

Three parts:
1. Cost per epoch (SST-2): one epoch of each contender (and of 8 Y-Tuning heads in one pass), fresh
   each time, interleaved over --repeats rounds (the order reversed every other round); medians.
2. A 10-epoch sweep of 8 heads (SST-2): Y-Tuning = extraction (measured) + 10 x the 8-head one-pass
   epoch (measured for 1 epoch, extrapolated); LoRA = 80 x the LoRA epoch (measured, extrapolated).
3. Accuracy on each task of --tasks (default sst2): LoRA and full fine-tuning train --epochs epochs
   (default 3), seed 0, evaluated after each. Y-Tuning and the probe cost a tenth or less per epoch,
   so they train --head-epochs epochs (default 10) in one pass, under --seeds seeds (default 3: they
   take seconds); seed 0, the seed of the LoRA and full runs, is the headline, the others show the
   spread. Each method's best validation epoch is reported. --accuracy-only skips parts 1 and 2.

    python benchmarks/bench_train.py --quick                 # 500 rows, 1 epoch, 2 repeats
    python benchmarks/bench_train.py --out results.json      # 2,000 rows, 3 epochs, 2 repeats
    python benchmarks/bench_train.py --tasks sst2,cola,mrpc,rte,stsb --accuracy-only --out glue.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import environment, glue_subset, markdown_table, write_json
from torch import nn

from ytune import ExtractConfig, ExtractResult, HeadSpec, TrainConfig, extract, train
from ytune.cache.reader import BUCKET
from ytune.device import configure_cpu
from ytune.extract.data import TextDataset
from ytune.extract.encoder import resolve_model
from ytune.extract.glue import GLUE_TASKS
from ytune.extract.pipeline import TRUNCATION, Tokenized, pad, tokenize
from ytune.train.config import KIND_DEFAULTS
from ytune.train.metrics import compute_metrics

BATCH = 32
MAX_LENGTH = ExtractConfig().max_length
_TRAIN = TrainConfig()  # the optimiser settings every contender shares with ytune's trainer
WEIGHT_DECAY, WARMUP, CLIP = _TRAIN.weight_decay, _TRAIN.warmup, _TRAIN.clip
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.1)
# LoRA's query and value projections, by the encoder's model type (their module names differ).
QUERY_VALUE = {"bert": ["query", "value"], "mpnet": ["q", "v"], "deberta-v2": ["query_proj", "value_proj"]}
BASELINE_LR = {"lora": 5e-4, "full": 3e-5}
PROBE_LR = 1e-3
SWEEP_LRS = (2.5e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3)  # the 8 heads of one pass
SWEEP_EPOCHS = 10
GOAL_RATIO, GOAL_ACCURACY = 20.0, 96.0
TASK_NAMES = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B"}
METHODS = ("ytuning", "probe", "lora", "full")
METHOD_LABELS = {
    "ytuning": "Y-Tuning (default head)",
    "probe": "linear probe",
    "lora": "LoRA r=8",
    "full": "full fine-tuning",
}


def accuracy_heads() -> list[HeadSpec]:
    """The two heads of the accuracy part, trained in one pass over a task's cache."""
    return [HeadSpec("ytuning"), HeadSpec("probe", config={"head_type": "probe"}, lr=PROBE_LR)]


# ------------------------------------------------------------------------------------------------
# Data


def train_batches(lengths: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """ytune's shuffled batching: pools of BUCKET batches, sorted by length, cut, batches shuffled."""
    order, out = rng.permutation(len(lengths)), []
    for start in range(0, len(order), BATCH * BUCKET):
        pool = sorted(order[start : start + BATCH * BUCKET], key=lambda i: lengths[i])
        cuts = range(0, len(pool), BATCH)
        out += [pool[c : c + BATCH] for c in rng.permutation(cuts)]
    return out


def collate(tok: Tokenized, rows: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The rows padded to the longest, as extraction pads them (input ids, attention mask, type ids)."""
    return pad(tok, np.asarray(rows), pad_id, torch.device("cpu"))[0]


# ------------------------------------------------------------------------------------------------
# LoRA and full fine-tuning


class MeanPoolModel(nn.Module):
    """Encoder -> mean over real tokens -> linear layer (class logits, or one score for regression)."""

    def __init__(self, encoder: nn.Module, hidden: int, outputs: int, regression: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(hidden, outputs)
        self.regression = regression

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.encoder(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        out = self.linear((h * m).sum(1) / m.sum(1))
        return out[:, 0] if self.regression else out


class Baseline:
    """LoRA or full fine-tuning of the encoder on a task's pre-tokenized rows."""

    def __init__(self, path: str, data: TextDataset, seed: int = 0) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # No pooler: mean pooling is the classifier's input, so the pooler would be dead weight.
        self.encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.pad = self.tokenizer.pad_token_id or 0
        self.task = data.task
        self.regression = data.task.kind == "regression"
        self.outputs = 1 if self.regression else len(data.task.label_names)
        train_split, val_split = data.splits["train"], data.splits["validation"]
        self.train = tokenize(self.tokenizer, train_split, MAX_LENGTH)
        self.val = tokenize(self.tokenizer, val_split, MAX_LENGTH)
        self.train_lengths = self.train.lengths
        dtype = torch.float32 if self.regression else torch.long
        self.train_labels = torch.tensor(train_split.labels, dtype=dtype)
        self.val_labels = np.asarray(val_split.labels)
        self.seed = seed

    def build(self, method: str) -> tuple[nn.Module, list[nn.Parameter]]:
        torch.manual_seed(self.seed)
        encoder = copy.deepcopy(self.encoder)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            targets = QUERY_VALUE[encoder.config.model_type]
            encoder = get_peft_model(encoder, LoraConfig(**LORA, target_modules=targets))
        else:
            encoder.requires_grad_(True)
        model = MeanPoolModel(encoder, self.encoder.config.hidden_size, self.outputs, self.regression)
        return model, [p for p in model.parameters() if p.requires_grad]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target) if self.regression else F.cross_entropy(output, target)

    def fit(
        self,
        method: str,
        epochs: int,
        evaluate: bool,
        lr: float | None = None,
        checkpoint: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> dict:
        """Train `epochs` epochs; each epoch's training seconds (and validation metrics if asked).

        With `checkpoint`, the run's state is saved there after every epoch and a rerun continues
        from it with the same batches and random state, so an hour-long run killed midway loses at
        most an epoch. `log` hears of every finished epoch: on these cores one can take 25 minutes."""
        model, params = self.build(method)
        optimizer = torch.optim.AdamW(params, lr=lr or BASELINE_LR[method], weight_decay=WEIGHT_DECAY)
        steps = epochs * math.ceil(len(self.train.ids) / BATCH)
        warm = max(1, int(WARMUP * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
        )
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        history: list[dict] = []
        if checkpoint is not None and checkpoint.exists():
            state = torch.load(checkpoint, weights_only=True)
            model.load_state_dict(state["model"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["rng"])
            history = json.loads(state["history"])
        for epoch in range(len(history), epochs):
            model.train()
            batches = train_batches(self.train_lengths, np.random.default_rng([self.seed, epoch]))
            start, seen, total = time.perf_counter(), 0, 0.0
            for rows in batches:
                loss = self.loss(model(collate(self.train, rows, self.pad)), self.train_labels[rows])
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
                entry.update({f"validation_{k}": v for k, v in self.metrics(model).items()})
                entry["eval_seconds"] = time.perf_counter() - start
            history.append(entry)
            if log is not None:
                log(
                    f"epoch {epoch + 1}/{epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch")
                )
            if checkpoint is not None:
                state = {
                    "model": {n: t for n, t in model.state_dict().items() if n in trained},
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": json.dumps(history),
                }
                torch.save(state, checkpoint.with_suffix(".tmp"))
                checkpoint.with_suffix(".tmp").replace(checkpoint)
        return {"tunable_parameters": sum(p.numel() for p in params), "history": history}

    @torch.inference_mode()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics of the model on the validation split (rows batched by length)."""
        model.eval()
        order = np.argsort(self.val.lengths, kind="stable")
        preds = np.zeros(len(order), dtype=np.float64 if self.regression else np.int64)
        for start in range(0, len(order), 128):
            rows = list(order[start : start + 128])
            out = model(collate(self.val, rows, self.pad)).float()
            preds[rows] = (out if self.regression else out.argmax(-1)).numpy()
        return compute_metrics(self.task.metrics, preds, self.val_labels)


# ------------------------------------------------------------------------------------------------
# Y-Tuning


def ytune_run(
    cache: Path, specs: list[HeadSpec], epochs: int, threads: int, out: Path, seed: int = 0
) -> dict:
    """`train()` on the cache; every head's metrics.json, and the call's wall seconds."""
    start = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, progress=False, seed=seed)
    train(cache, specs, cfg, out)
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
# One task, prepared once: its rows, its cache, its pre-tokenized rows for LoRA and full fine-tuning


@dataclass
class Prepared:
    task: str
    data: TextDataset
    ex: ExtractResult
    base: Baseline

    @property
    def cache(self) -> Path:
        return Path(self.ex.path)


def prepare(task: str, rows: int, glue: str, layers: tuple[int, ...], model: str, tmp: Path) -> Prepared:
    data = glue_subset(task, rows, glue)
    ex = extract(data, ExtractConfig(layers=layers, cache_dir=tmp / "cache", progress=False))
    print(f"{task}: {ex.summary()}", flush=True)
    return Prepared(task, data, ex, Baseline(model, data))


def fmt_int(n: int) -> str:
    return f"{n:,}"


def finite_or_low(x: float) -> float:
    """A metric for picking the best epoch: nan (a constant prediction's correlation) never wins."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


# ------------------------------------------------------------------------------------------------
# Parts 1 and 2: cost per epoch and a sweep's cost (SST-2)


def cost_parts(
    prep: Prepared, rows: int, repeats: int, threads: int, layers: tuple[int, ...], tmp: Path
) -> dict:
    """Measure and print the cost per epoch and the sweep; their results for the JSON."""
    cache, base, ex = prep.cache, prep.base, prep.ex
    names = ["ytuning", "ytuning x8", "lora", "full"]
    timings: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if name == "ytuning":
                t = ytune_epoch(cache, 1, threads, tmp / f"y1-{r}")
            elif name == "ytuning x8":
                t = ytune_epoch(cache, len(SWEEP_LRS), threads, tmp / f"y8-{r}")
            else:
                fit = base.fit(name, 1, evaluate=False)
                t = {
                    "seconds": fit["history"][0]["seconds"],
                    "tunable_parameters": fit["tunable_parameters"],
                }
            timings[name].append(t)
            print(f"round {r} {name}: {t['seconds']:.2f} s", flush=True)
    # One LoRA validation pass, to size what per-epoch evaluation would add to LoRA's sweep.
    model, _ = base.build("lora")
    start = time.perf_counter()
    base.metrics(model)
    lora_eval = time.perf_counter() - start

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

    print()
    print(
        f"## SST-2, first {rows:,} train rows ({int(base.train_lengths.sum()):,} tokens), full validation "
        f"({len(prep.data.splits['validation'])} rows); all-MiniLM-L6-v2 ({encoder_params:,} parameters); "
        f"batch {BATCH}; torch threads {threads}; cached layers {list(layers)}"
    )
    print()
    print(f"### 1. Cost per epoch on SST-2 (median of {repeats} interleaved rounds; evaluation excluded)")
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
        f"### 2. A {SWEEP_EPOCHS}-epoch sweep of {len(SWEEP_LRS)} heads on SST-2 "
        f"(lr {', '.join(f'{x:g}' for x in SWEEP_LRS)})"
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
    print(flush=True)
    return {
        "extraction": {"seconds": ex.seconds, "rows": ex.rows, "tokens": ex.tokens, "bytes": ex.bytes},
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
            "lora_eval_s": lora_eval,
            "measured": ["extraction", "1 epoch of 8 heads in one pass", "1 LoRA epoch", "1 full epoch"],
            "extrapolated": ["x10 epochs (Y-Tuning)", "x80 epochs (LoRA, full)"],
        },
    }


# ------------------------------------------------------------------------------------------------
# Part 3: accuracy, per task


def accuracy_task(prep: Prepared, epochs: int, head_epochs: int, seeds: int, threads: int, tmp: Path) -> dict:
    """Y-Tuning and the probe (one pass, every seed), LoRA and full fine-tuning (seed 0) on one task."""
    start = time.perf_counter()
    spec = prep.data.task
    headline = spec.metrics[0]
    runs = [
        ytune_run(
            prep.cache, accuracy_heads(), head_epochs, threads, tmp / f"accuracy-{prep.task}-{seed}", seed
        )
        for seed in range(seeds)
    ]
    print(f"{prep.task}: ytuning and probe done ({runs[0]['wall_s']:.0f} s a seed)", flush=True)
    fits = {}
    for name in ("lora", "full"):
        fits[name] = prep.base.fit(name, epochs, evaluate=True)
        print(f"{prep.task}: {name} done", flush=True)

    methods: dict[str, dict] = {}
    for spec_ in accuracy_heads():
        name = spec_.name
        m = runs[0]["heads"][name]
        methods[name] = {
            "metrics": m["validation"],  # empty if no epoch gave a finite headline metric
            "headline": m["validation"].get(headline, math.nan),
            "best_epoch": m["best_epoch"],
            "epochs": head_epochs,
            "lr": spec_.lr or KIND_DEFAULTS[spec.kind]["lr"],
            "tunable_parameters": m["tunable_parameters"],
            "s_per_epoch": statistics.median(h["seconds"] for h in m["history"]),
            "history": m["history"],
            "seeds": [run["heads"][name]["validation"].get(headline, math.nan) for run in runs],
        }
    for name, fit in fits.items():
        hist = fit["history"]
        best = max(range(len(hist)), key=lambda i: finite_or_low(hist[i][f"validation_{headline}"]))
        methods[name] = {
            "metrics": {k: hist[best][f"validation_{k}"] for k in spec.metrics},
            "headline": hist[best][f"validation_{headline}"],
            "best_epoch": best,
            "epochs": epochs,
            "lr": BASELINE_LR[name],
            "tunable_parameters": fit["tunable_parameters"],
            "s_per_epoch": statistics.median(h["seconds"] for h in hist),
            "eval_s": statistics.median(h["eval_seconds"] for h in hist),
            "history": hist,
        }
    full = methods["full"]["headline"]
    for m in methods.values():
        ok = math.isfinite(full) and full > 0 and math.isfinite(m["headline"])
        m["of_full_pct"] = 100 * m["headline"] / full if ok else None
        if "seeds" in m:
            seed_median = statistics.median(m["seeds"])
            m["seed_median_of_full_pct"] = (
                100 * seed_median / full if ok and math.isfinite(seed_median) else None
            )
    return {
        "task": prep.task,
        "kind": spec.kind,
        "metrics": list(spec.metrics),
        "headline_metric": headline,
        "train_rows": len(prep.data.splits["train"]),
        "validation_rows": len(prep.data.splits["validation"]),
        "pairs": prep.data.splits["train"].pairs is not None,
        "train_tokens": int(prep.base.train_lengths.sum()),
        "truncated_rows": prep.ex.truncated,
        "extraction_s": prep.ex.seconds,
        "encoder_parameters": runs[0]["heads"]["ytuning"]["encoder_parameters"],
        "ytuning_probe_wall_s": [run["wall_s"] for run in runs],
        "methods": methods,
        "wall_s": time.perf_counter() - start,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def x100(x: float) -> str:
    return f"{100 * x:.2f}" if math.isfinite(x) else "nan"


def print_task(r: dict, epochs: int, head_epochs: int, seeds: int, threads: int) -> None:
    headline, others = r["headline_metric"], r["metrics"][1:]
    name = TASK_NAMES.get(r["task"], r["task"])
    encoder = r["encoder_parameters"]
    rows = []
    for n in METHODS:
        m = r["methods"][n]
        row = [
            METHOD_LABELS[n],
            fmt_int(m["tunable_parameters"]),
            f"{100 * m['tunable_parameters'] / encoder:.3f}%",
            f"**{x100(m['headline'])}**",
            pct(m["of_full_pct"]),
        ]
        row += [x100(m["metrics"].get(k, math.nan)) for k in others]
        row += [f"{m['best_epoch']} of {m['epochs']}", f"{m['s_per_epoch']:.2f}"]
        seeds_ = m.get("seeds")
        row.append(
            " / ".join(x100(v) for v in (min(seeds_), statistics.median(seeds_), max(seeds_)))
            if seeds_ and len(seeds_) > 1
            else "- (seed 0 only)"
        )
        rows.append(row)
    headers = ["method", "tunable params", "of encoder", f"{headline} x100", "of full FT"]
    headers += [f"{k} x100" for k in others]
    headers += ["best epoch (0-based) of", "s/epoch", f"seeds 0-{seeds - 1}: min / median / max"]
    print()
    print(
        f"## {name} ({r['kind']}{', sentence pairs' if r['pairs'] else ''}): first {r['train_rows']:,} "
        f"train rows ({r['train_tokens']:,} tokens), full validation ({r['validation_rows']:,} rows); "
        f"headline metric {headline}; all-MiniLM-L6-v2 ({encoder:,} parameters); torch threads {threads}"
    )
    print()
    print(markdown_table(headers, rows))
    print()
    y, lora, full = (r["methods"][n] for n in ("ytuning", "lora", "full"))
    print(
        f"Notes: LoRA and full fine-tuning train {epochs} epoch(s), seed 0. Y-Tuning and the probe train "
        f"{head_epochs} epoch(s) in one pass over the cached features (so they share one s/epoch, here "
        f"{lora['s_per_epoch'] / y['s_per_epoch']:.0f}x cheaper than LoRA's and "
        f"{full['s_per_epoch'] / y['s_per_epoch']:.0f}x than full fine-tuning's), seed 0 in the table, "
        "the spread of seeds in the last column. Every "
        "method: its best validation epoch by the headline metric. "
        f"Extraction once: {r['extraction_s']:.1f} s. "
        f"Y-Tuning / full fine-tuning: {pct(y['of_full_pct'])}, seed median {pct(y['seed_median_of_full_pct'])} "
        f"(goal >= {GOAL_ACCURACY:.0f}%)."
    )
    print(flush=True)


def print_summary(results: dict[str, dict]) -> None:
    rows = []
    for task, r in results.items():
        m = r["methods"]
        rows.append(
            [TASK_NAMES.get(task, task), r["headline_metric"]]
            + [x100(m[n]["headline"]) for n in METHODS]
            + [pct(m[n]["of_full_pct"]) for n in ("ytuning", "probe", "lora")]
        )
    headers = ["task", "metric (x100)", "Y-Tuning", "probe", "LoRA", "full FT"]
    headers += ["Y-Tuning of full", "probe of full", "LoRA of full"]
    print()
    print("## Summary (seed 0, best validation epoch)")
    print()
    print(markdown_table(headers, rows))
    print(flush=True)


# ------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    p.add_argument(
        "--tasks", default="sst2", help="GLUE tasks of the accuracy part, e.g. sst2,cola,mrpc,rte,stsb"
    )
    p.add_argument("--rows", type=int, help="training rows per task (default 2,000; --quick 500)")
    p.add_argument("--epochs", type=int, help="epochs of LoRA and full fine-tuning (default 3; --quick 1)")
    p.add_argument(
        "--head-epochs", type=int, help="epochs of Y-Tuning and the probe, best kept (default 10; --quick 1)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for every contender (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the epoch timings")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the Y-Tuning and probe accuracy runs")
    p.add_argument("--layers", default="-4,-3,-2,-1", help="hidden states to cache, e.g. --layers=-1")
    p.add_argument("--accuracy-only", action="store_true", help="skip parts 1 and 2 (SST-2 cost, sweep)")
    for method in BASELINE_LR:
        p.add_argument(
            f"--{method}-lr", type=float, help=f"learning rate of {method} (default {BASELINE_LR[method]})"
        )
    p.add_argument("--quick", action="store_true", help="500 rows, 1 epoch")
    p.add_argument("--out", help="write the results as JSON here (rewritten after every task)")
    a = p.parse_args()
    BASELINE_LR.update({m: getattr(a, f"{m}_lr") for m in BASELINE_LR if getattr(a, f"{m}_lr")})
    rows = a.rows or (500 if a.quick else 2000)
    epochs = a.epochs or (1 if a.quick else 3)
    head_epochs = a.head_epochs or (1 if a.quick else 10)
    repeats, seeds = max(1, a.repeats), max(1, a.seeds)
    layers = tuple(int(x) for x in a.layers.split(","))
    tasks = list(dict.fromkeys(t.strip().lower() for t in a.tasks.split(",") if t.strip()))
    unknown = [t for t in tasks if t not in GLUE_TASKS]
    if unknown or not tasks:
        p.error(
            f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(GLUE_TASKS)}"
        )
    configure_cpu(a.threads)  # extraction, the baselines and the heads
    t0 = time.perf_counter()

    results: dict = {
        "environment": environment(),
        "settings": {
            "tasks": tasks,
            "rows": rows,
            "epochs": epochs,
            "head_epochs": head_epochs,
            "threads": a.threads,
            "repeats": None if a.accuracy_only else repeats,
            "seeds": seeds,
            "baseline_seed": 0,
            "layers": list(layers),
            "batch_size": BATCH,
            "batching": "shuffled, pools of 16 batches sorted by length, dynamic padding (all contenders)",
            "max_length": MAX_LENGTH,
            "truncation": TRUNCATION,
            "lora": LORA,
            "lr": {
                "ytuning": {k: v["lr"] for k, v in KIND_DEFAULTS.items()},
                "probe": PROBE_LR,
                **BASELINE_LR,
            },
            "sweep_lrs": SWEEP_LRS,
            "goal_pct": GOAL_ACCURACY,
        },
        "accuracy": {},
    }
    path = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        sst2 = None
        if not a.accuracy_only:
            sst2 = prepare("sst2", rows, a.glue, layers, path, tmp)
            results.update(cost_parts(sst2, rows, repeats, a.threads, layers, tmp))
            write_json(a.out, results)
        if len(tasks) > 1 or not a.accuracy_only:
            print(
                f"### 3. Accuracy on {', '.join(TASK_NAMES.get(t, t) for t in tasks)}: LoRA and full fine-tuning "
                f"{epochs} epoch(s), Y-Tuning and the probe {head_epochs}; best validation epoch",
                flush=True,
            )
        for task in tasks:
            prep = (
                sst2
                if task == "sst2" and sst2 is not None
                else prepare(task, rows, a.glue, layers, path, tmp)
            )
            r = accuracy_task(prep, epochs, head_epochs, seeds, a.threads, tmp)
            results["accuracy"][task] = r
            print_task(r, epochs, head_epochs, seeds, a.threads)
            results["wall_s"] = time.perf_counter() - t0
            write_json(a.out, results)
            shutil.rmtree(prep.cache, ignore_errors=True)
            sst2 = None if task == "sst2" else sst2
            del prep
    if len(tasks) > 1:
        print_summary(results["accuracy"])
    total_s = time.perf_counter() - t0
    print(f"\n(benchmark wall time {total_s:.0f} s)")
    results["wall_s"] = total_s
    write_json(a.out, results)


if __name__ == "__main__":
    main()

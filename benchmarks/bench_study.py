"""The two-encoder accuracy study: Y-Tuning, the linear probe, LoRA and full fine-tuning of
all-MiniLM-L6-v2 and all-mpnet-base-v2 on five GLUE tasks (RESULTS.md 5f).

Every finished run appends one line to --results (a JSON line keyed by encoder, task, method,
setting and seed) and a rerun skips the keys already there, so the study runs over as many
sessions as it needs. A LoRA or full fine-tuning run also saves its state after every epoch under
--scratch and continues from there when it was killed midway.

- Rows: the first 5,000 training rows of SST-2 and CoLA, the whole training splits of MRPC, RTE
  and STS-B; every method of a task sees the same rows; evaluation on the whole validation split.
- Y-Tuning and the probe (`--methods ytuning`): the default head (default epochs, best epoch on
  validation) and the probe at lr 1e-3, in one pass over a cache of the last four hidden states
  (ytune's default until RESULTS.md 5f), so the pass's seconds per epoch (reading included) are
  both heads'. Seeds 0, 1, 2.
- Y-Tuning with every default, today's hidden states included: `--methods layers`, setting
  "default" (the default head on each choice of hidden states, from a cache of all of them).
- LoRA r=8 on query/value and full fine-tuning (bench_train.py's Baseline: mean pooling, a linear
  layer, batch 32, AdamW with 6% warm-up, clipping 1.0, 3 epochs, best validation epoch), each at
  its usual learning rate and a higher one (SETTINGS); the better setting is kept on validation.
- One torch thread per process: run the baselines in one process and Y-Tuning in another.

    python benchmarks/bench_study.py --encoder mpnet --methods lora,full --settings usual
    python benchmarks/bench_study.py --encoder mpnet --methods ytuning,layers --seeds 0,1,2
    python benchmarks/bench_study.py --encoder mpnet --methods variant,layers --seeds 0,1,2 --tasks cola
    python benchmarks/bench_study.py --table          # the table from what --results holds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_train import Baseline
from common import environment, glue_subset, markdown_table
from transformers import AutoConfig

from ytune import ExtractConfig, HeadSpec, TrainConfig, extract, sweep, train
from ytune.cache.files import size_on_disk
from ytune.cli import show_progress
from ytune.device import configure_cpu
from ytune.extract.encoder import default_layers, resolve_model
from ytune.train.config import HeadConfig

HERE = Path(__file__).resolve().parent
ENCODERS = {"minilm": None, "mpnet": str(Path.home() / ".cache/ytune-models/all-mpnet-base-v2")}
TASKS = {"sst2": 5000, "cola": 5000, "mrpc": None, "rte": None, "stsb": None}  # training rows (None: all)
NAMES = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B"}
SETTINGS = {"lora": {"usual": 5e-4, "high": 1e-3}, "full": {"usual": 2e-5, "high": 5e-5}}
PROBE = HeadSpec("probe", config={"head_type": "probe"}, lr=1e-3)
# Changes to the default head that could close the gap to full fine-tuning and pass the probe:
# regularisation and a smaller head against the over-fitting its learning curves show (best epoch
# early, training loss near 0), and a probe inside the head (skip=pooled), since the probe of these
# sentence-embedding encoders is strong. Left out: weight_decay=0.1 (at lr 5e-4 it shrinks the
# weights by under 10% over a run) and label_init=names (below the default on 6 of 8 in 5e).
VARIANTS = {
    "default": {},
    "dropout=0.3": {"config": {"dropout": 0.3}},
    "width=256,blocks=1": {"config": {"width": 256, "blocks": 1}},
    "skip=pooled": {"config": {"skip": "pooled"}},
}
LAYERS = (-4, -3, -2, -1)
# Which hidden states the default head reads, from a cache of all of them (`--methods layers`):
# the last four (the cache above, ytune's default until RESULTS.md 5f), the middle third (syntax
# peaks there in probing studies: CoLA), four spread evenly over the depth (the storage of the last
# four), all of them under the head's learned softmax mix, and what `ytune extract` now caches by
# default (at most four from the middle third). A function of the encoder's layer count n.
LAYER_CHOICES = {
    "last4": lambda n: list(LAYERS),
    "middle": lambda n: list(range(n // 3, 2 * n // 3 + 1)),
    "spread4": lambda n: [int(n * k / 4 + 0.5) for k in (1, 2, 3, 4)],
    "all": lambda n: list(range(n + 1)),
    "default": lambda n: list(default_layers(n)),
}
# How the cache stores features (`--methods dtype`): the default head with every default, from a
# cache of each storage dtype; the 8-bit one is taken as the default only if it holds (RESULTS.md 8).
STORAGE = {"float16": "float16", "int8": "int8"}
# What might take Y-Tuning past LoRA on MPNet (`--methods ideas`, RESULTS.md 5g): the default head
# with every default beside changes to it, one pass per seed on the default hidden states, each
# head named after its change (so that its dropout does not depend on which others share its pass).
IDEAS = {
    "default": {"config": {"members": 1, "ema": 0.0}},  # the default head before RESULTS.md 5g
    "members=3": {"config": {"members": 3}},
    "ema=1": {"config": {"ema": 1.0}},
    "queries=4": {"config": {"queries": 4}},
    "members=3+ema=1": {"config": {"members": 3, "ema": 1.0}},
    "members=2+ema=1": {"config": {"members": 2, "ema": 1.0}},
    "members=3+ema=1+queries=4": {"config": {"members": 3, "ema": 1.0, "queries": 4}},
}
# The head defaults RESULTS.md 5g chose, as the "defaults" records' setting.
DEFAULTS = ",".join(f"{k}={getattr(HeadConfig(), k):g}" for k in ("members", "ema", "queries"))
# The sweep of RESULTS.md 5c: learning rate x width x blocks, 12 heads in one pass.
GRID = {"lr": ["2e-4", "5e-4", "1e-3"], "width": ["256", "384"], "blocks": ["1", "2"]}
# The kinds of pass that compare settings of the default head: (settings, the one each is compared
# against, what the table calls them).
COMPARISONS = {
    "variant": (VARIANTS, "default", "variant"),
    "layers": (LAYER_CHOICES, "last4", "hidden states read"),
    "dtype": (STORAGE, "float16", "storage"),
    "ideas": (IDEAS, "default", "idea"),
}
EPOCHS = 3  # of LoRA and full fine-tuning


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    return {key(json.loads(line)) for line in path.read_text().splitlines() if line.strip()}


def key(r: dict) -> tuple:
    return (r["encoder"], r["task"], r["method"], r["setting"], r["seed"])


def append(path: Path, record: dict) -> None:
    """One line in one write to a file opened for appending: two studies on two cores may share it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())
    finally:
        os.close(fd)


def headline_of(history: list[dict], metric: str) -> tuple[int, float]:
    """The best epoch on validation (nan, a constant prediction's correlation, never wins)."""

    def score(h: dict) -> float:
        x = h.get(f"validation_{metric}", math.nan)
        return x if math.isfinite(x) else -math.inf

    best = max(range(len(history)), key=lambda i: score(history[i]))
    return best, history[best].get(f"validation_{metric}", math.nan)


def run_heads(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """Y-Tuning's default head and the probe, one pass per seed, on the task's cache."""
    heads = {("ytuning", "default"): HeadSpec("ytuning"), ("probe", "default"): PROBE}
    run_pass(encoder, task, seeds, heads, a, done)


def run_variants(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """The default head beside each variant (VARIANTS), all in one pass per seed: the same
    reading order and seeds, so the differences are the variants'."""
    heads = {("variant", name): HeadSpec(f"v{i}", **spec) for i, (name, spec) in enumerate(VARIANTS.items())}
    run_pass(encoder, task, seeds, heads, a, done)


def run_layers(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """The default head on each choice of hidden states (LAYER_CHOICES), in one pass per seed over
    a cache of every hidden state."""
    n = AutoConfig.from_pretrained(resolve_model(ENCODERS[encoder])).num_hidden_layers
    heads = {
        ("layers", name): HeadSpec(f"l{i}", layers=choose(n))
        for i, (name, choose) in enumerate(LAYER_CHOICES.items())
    }
    run_pass(encoder, task, seeds, heads, a, done, cached=tuple(range(n + 1)))


def run_defaults(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """`ytune train` with every default: one head, named as the command names it, alone in its pass
    over the default hidden states, so its seconds per epoch are its cost (an ensemble's members
    counted whole). The setting names the head defaults (DEFAULTS): records of other defaults are
    kept apart."""
    run_pass(encoder, task, seeds, {("defaults", DEFAULTS): HeadSpec("ytuning")}, a, done, cached=None)


def run_ideas(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """The default head beside the IDEAS named by --ideas, in one pass per seed over the task's
    cache of ytune's default hidden states."""
    heads = {("ideas", name): HeadSpec(name, **IDEAS[name]) for name in a.ideas.split(",")}
    run_pass(encoder, task, seeds, heads, a, done, cached=None)


def run_dtypes(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """The default head on ytune's default hidden states, from a cache of each storage dtype
    (STORAGE): one pass per dtype and seed, the same rows, order and seeds."""
    for dtype in STORAGE:
        run_pass(encoder, task, seeds, {("dtype", dtype): HeadSpec("ytuning")}, a, done, None, dtype)


def task_cache(
    encoder: str,
    task: str,
    a: argparse.Namespace,
    cached: tuple[int, ...] | None = LAYERS,
    dtype: str = "float16",
):
    """The task's rows and their cache of the `cached` hidden states (None: ytune's default ones),
    extracted once, then found."""
    data = glue_subset(task, TASKS[task], a.glue)
    cfg = ExtractConfig(
        model=ENCODERS[encoder], layers=cached, dtype=dtype, cache_dir=a.cache_dir, progress=False
    )
    return data, extract(data, cfg)


def run_sweep(encoder: str, task: str, seeds: list[int], a: argparse.Namespace, done: set) -> None:
    """Y-Tuning as the issue defines it once sweeps exist: the winner of GRID (12 heads, one pass),
    its best epoch and the winner chosen on a held-out slice of the training rows, scored on
    validation once, on the default hidden states. One record per seed: the winner and its
    validation score. (Settings "grid-last4-on-validation" and "grid-on-validation": sweeps that
    chose on validation by mistake, kept as the optimistic bound; not the swept column.)"""
    todo = [s for s in seeds if (encoder, task, "sweep", "grid", s) not in done]
    if not todo:
        return
    data, ex = task_cache(encoder, task, a, cached=None)  # ytune's default hidden states
    for seed in todo:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            cfg = TrainConfig(seed=seed, progress=False)
            won = sweep(ex.path, [HeadSpec("ytuning")], GRID, cfg, Path(out))
            report = json.loads((Path(out) / "sweep.json").read_text())
            m = json.loads((Path(out) / won["winner"] / "metrics.json").read_text())
        record_head(
            a.results,
            (encoder, task, "sweep", "grid", seed),
            data,
            m,
            time.perf_counter() - start,
            winner=won["winner"],
            selected_on=won["selected_on"],
            selection=won["selection"],
            heads_in_pass=len(report["heads"]),
            heads=report["heads"],
        )


def run_pass(
    encoder: str,
    task: str,
    seeds: list[int],
    heads: dict[tuple[str, str], HeadSpec],
    a: argparse.Namespace,
    done: set,
    cached: tuple[int, ...] | None = LAYERS,
    dtype: str = "float16",
) -> None:
    """Train the `heads` ((method, setting) -> spec) not yet recorded, in one pass per seed over the
    task's cache of the `cached` hidden states; one record per head and seed. A head added to a
    comparison later trains in a pass of its own: the same rows, seeds and order, another dropout
    stream."""
    todo = [s for s in seeds if any((encoder, task, m, setting, s) not in done for m, setting in heads)]
    if not todo:
        return
    data, ex = task_cache(encoder, task, a, cached, dtype)
    for seed in todo:
        missing = {k: spec for k, spec in heads.items() if (encoder, task, *k, seed) not in done}
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            specs = list(missing.values())
            train(
                ex.path,
                specs,
                TrainConfig(seed=seed, progress=False),
                Path(out),
            )
            wall = time.perf_counter() - start
            for (method, setting), spec in missing.items():
                m = json.loads((Path(out) / spec.name / "metrics.json").read_text())
                record_head(
                    a.results,
                    (encoder, task, method, setting, seed),
                    data,
                    m,
                    wall,
                    config=spec.config,
                    layers=spec.layers,
                    heads_in_pass=len(specs),
                    dtype=dtype,
                    cache_bytes=size_on_disk(Path(ex.path)),
                )


def record_head(results: Path, key: tuple, data, m: dict, wall: float, **extra) -> None:
    """Append one head's record (its metrics.json `m`, with `extra` fields) under `key` =
    (encoder, task, method, setting, seed), and say its headline."""
    metric = data.task.metrics[0]
    record = {
        **dict(zip(("encoder", "task", "method", "setting", "seed"), key, strict=True)),
        **extra,
        "lr": m["lr"],
        "weight_decay": m["weight_decay"],
        "train_rows": len(data.splits["train"]),
        "metric": metric,
        "headline": m["validation"].get(metric, math.nan),
        "validation": m["validation"],
        "best_epoch": m["best_epoch"],
        "epochs": len(m["history"]),
        "s_per_epoch": statistics.median(h["seconds"] for h in m["history"]),
        "tunable_parameters": m["tunable_parameters"],
        "encoder_parameters": m["encoder_parameters"],
        "wall_s": wall,
        "history": m["history"],
        "environment": environment(),
    }
    append(results, record)
    print(" ".join(map(str, key)) + f": {metric} {record['headline']:.4f}", flush=True)


def run_baseline(
    encoder: str, task: str, method: str, setting: str, seed: int, a: argparse.Namespace
) -> None:
    data = glue_subset(task, TASKS[task], a.glue)
    metric = data.task.metrics[0]
    base = Baseline(resolve_model(ENCODERS[encoder]), data, seed)
    a.scratch.mkdir(parents=True, exist_ok=True)
    checkpoint = a.scratch / f"{encoder}-{task}-{method}-{setting}-{seed}.pt"
    lr = SETTINGS[method][setting]
    start = time.perf_counter()
    fit = base.fit(
        method, EPOCHS, evaluate=True, lr=lr, checkpoint=checkpoint, log=lambda m: print(m, flush=True)
    )
    best, headline = headline_of(fit["history"], metric)
    record = {
        "encoder": encoder,
        "task": task,
        "method": method,
        "setting": setting,
        "seed": seed,
        "lr": lr,
        "train_rows": len(data.splits["train"]),
        "metric": metric,
        "headline": headline,
        "validation": {k: fit["history"][best][f"validation_{k}"] for k in data.task.metrics},
        "best_epoch": best,
        "epochs": EPOCHS,
        "s_per_epoch": statistics.median(h["seconds"] for h in fit["history"]),
        "tunable_parameters": fit["tunable_parameters"],
        "encoder_parameters": sum(p.numel() for p in base.encoder.parameters()),
        "wall_s_last_session": time.perf_counter() - start,
        "history": fit["history"],
        "environment": environment(),
    }
    append(a.results, record)
    checkpoint.unlink(missing_ok=True)
    print(f"{encoder} {task} {method} {setting} seed {seed}: {metric} {headline:.4f}", flush=True)


# ------------------------------------------------------------------------------------------------
# The table


# The table's Y-Tuning and probe columns: (method, setting) of their records; seeds' median.
HEADS = {
    "Y-Tuning (default)": ("defaults", DEFAULTS),  # `ytune train` with no options, alone in its pass
    "Y-Tuning (one head)": ("layers", "default"),  # the default head until RESULTS.md 5g
    "Y-Tuning (last four)": ("ytuning", "default"),  # the default hidden states until RESULTS.md 5f
    "Y-Tuning (swept)": ("sweep", "grid"),  # on the default hidden states
    "probe": ("probe", "default"),
}
SHARES = (*(h for h in HEADS if h.startswith("Y-Tuning")), "lora")  # % of full FT


def seeds_summary(got: list[dict]) -> tuple[float, str, float]:
    """Median headline over seeds (a diverged run's NaN counts as the worst), its cell text with
    min-max, and the median seconds per epoch."""
    x = sorted(r["headline"] if math.isfinite(r["headline"]) else -math.inf for r in got)
    spread = f"{x[0]:.4f}-{x[-1]:.4f}, {len(x)} seeds"
    return statistics.median(x), spread, statistics.median(r["s_per_epoch"] for r in got)


def table(path: Path) -> str:
    """Per encoder and task: each method's headline (median of seeds with min-max; baselines: the
    setting with the better median), Y-Tuning's and LoRA's % of full fine-tuning, s/epoch."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows, shares, above, cheaper = [], {}, {}, {}
    for encoder in ENCODERS:
        for task in TASKS:
            mine = [r for r in runs if r["encoder"] == encoder and r["task"] == task]
            if not mine:
                continue
            runs_of: dict[tuple[str, str], list[dict]] = {}  # (method, setting) -> its seeds' runs
            for r in mine:
                runs_of.setdefault((r["method"], r["setting"]), []).append(r)
            cell, score, cost = {}, {}, {}
            for name, key in HEADS.items():
                if got := runs_of.get(key):
                    score[name], spread, cost[name] = seeds_summary(got)
                    cell[name] = f"{score[name]:.4f} ({spread})"
            for method in SETTINGS:
                if tried := [got for (m, _), got in runs_of.items() if m == method]:
                    got = max(tried, key=lambda g: seeds_summary(g)[0])
                    score[method], spread, cost[method] = seeds_summary(got)
                    more = f", {spread}" if len(got) > 1 else ""
                    cell[method] = f"{score[method]:.4f} (lr {got[0]['lr']:g}{more})"
            full = score.get("full")
            of_full = {m: 100 * score[m] / full for m in SHARES if full and m in score}
            for m, share in of_full.items():
                shares.setdefault((encoder, m), []).append((NAMES[task], share))
            if "Y-Tuning (default)" in score and "probe" in score:
                above.setdefault(encoder, []).append(
                    (NAMES[task], score["Y-Tuning (default)"] - score["probe"])
                )
            # Y's seconds: the default head alone in its pass, where measured, else the last-four pass
            # (the head and the probe on 4 cached layers); the layers passes train 4-5 heads at once.
            mine_cost = next((m for m in ("Y-Tuning (default)", "Y-Tuning (last four)") if m in cost), None)
            if "lora" in cost and mine_cost:
                cheaper.setdefault(encoder, []).append((NAMES[task], cost["lora"] / cost[mine_cost]))
            rows.append(
                [
                    encoder,
                    NAMES[task],
                    mine[0]["metric"],
                    *(cell.get(m, "-") for m in (*HEADS, "lora", "full")),
                    *(f"{of_full[m]:.1f}%" if m in of_full else "-" for m in SHARES),
                    " / ".join(f"{cost[m]:.0f}" if m in cost else "-" for m in (mine_cost, "lora", "full")),
                ]
            )
    headers = [
        "encoder",
        "task",
        "metric",
        *HEADS,
        "LoRA r=8",
        "full FT",
        *(f"{m} % of full" for m in SHARES[:-1]),
        "LoRA % of full",
        "s/epoch Y / LoRA / full",
    ]
    out = markdown_table(headers, rows) + "\n"
    for (encoder, method), got in sorted(shares.items()):
        tasks = ", ".join(t for t, _ in got)
        mean = statistics.mean(x for _, x in got)
        # A task where the head beats fine-tuning must not hide a miss elsewhere: say the capped mean too.
        capped = statistics.mean(min(x, 100.0) for _, x in got)
        out += f"\n{encoder} {method}: {mean:.1f}% of full fine-tuning on average over {tasks}"
        out += f" ({capped:.1f}% with each task counted at most 100%)" if capped < mean else ""
    # The other two conditions: above the probe on every task, at least 10x cheaper than
    # LoRA per epoch.
    for encoder, got in above.items():
        out += f"\n{encoder} Y-Tuning (default) minus probe: " + ", ".join(f"{t} {d:+.4f}" for t, d in got)
    for encoder, got in cheaper.items():
        out += f"\n{encoder} LoRA epoch / Y-Tuning epoch: " + ", ".join(f"{t} {r:.0f}x" for t, r in got)
    return out


def variants_table(path: Path, method: str) -> str:
    """Per encoder and task: each setting of `method` ("variant" or "layers"), its median over
    seeds (min-max), against the baseline setting of the same passes (COMPARISONS)."""
    settings, baseline, called = COMPARISONS[method]
    runs = [r for r in map(json.loads, path.read_text().splitlines()) if r["method"] == method]
    rows = []
    for encoder in ENCODERS:
        for task in TASKS:
            got = {
                v: sorted(
                    r["headline"]
                    for r in runs
                    if (r["encoder"], r["task"], r["setting"]) == (encoder, task, v)
                )
                for v in settings
            }
            if not got[baseline]:
                continue
            base = statistics.median(got[baseline])
            rows += [
                [
                    encoder,
                    NAMES[task],
                    v,
                    f"{statistics.median(x):.4f}",
                    f"{x[0]:.4f}-{x[-1]:.4f}",
                    len(x),
                    f"{statistics.median(x) - base:+.4f}",
                ]
                for v, x in got.items()
                if x
            ]
    return markdown_table(["encoder", "task", called, "median", "min-max", "seeds", f"vs {baseline}"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue", default=str(HERE.parents[1] / "shared/data/glue"))
    p.add_argument("--encoder", choices=list(ENCODERS), default="mpnet")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument(
        "--methods",
        default="ytuning,lora,full",
        help="ytuning (trains the probe too), sweep (Y-Tuning swept), defaults, lora, full; variant, layers, dtype, ideas",
    )
    p.add_argument("--settings", default="usual,high", help="learning-rate settings of the baselines")
    p.add_argument("--ideas", default=",".join(IDEAS), help=f"of {', '.join(IDEAS)}")
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=Path("/work/caches"), help="where the task caches live")
    p.add_argument(
        "--scratch", type=Path, default=Path.home() / ".cache/ytune-study", help="epoch checkpoints"
    )
    p.add_argument("--results", type=Path, default=HERE / "results/study.jsonl")
    p.add_argument("--table", action="store_true", help="print the table from --results and stop")
    a = p.parse_args()
    if a.table:
        print("\n\n".join([table(a.results), *(variants_table(a.results, m) for m in COMPARISONS)]))
        return
    configure_cpu(a.threads)
    show_progress()  # the heads' progress lines, as `ytune train` shows them
    tasks, methods = a.tasks.split(","), a.methods.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    for task in tasks:
        if "ytuning" in methods:
            run_heads(a.encoder, task, seeds, a, done_keys(a.results))
        if "variant" in methods:
            run_variants(a.encoder, task, seeds, a, done_keys(a.results))
        if "layers" in methods:
            run_layers(a.encoder, task, seeds, a, done_keys(a.results))
        if "defaults" in methods:
            run_defaults(a.encoder, task, seeds, a, done_keys(a.results))
        if "ideas" in methods:
            run_ideas(a.encoder, task, seeds, a, done_keys(a.results))
        if "dtype" in methods:
            run_dtypes(a.encoder, task, seeds, a, done_keys(a.results))
        if "sweep" in methods:
            run_sweep(a.encoder, task, seeds, a, done_keys(a.results))
    for setting in a.settings.split(","):
        for task in tasks:
            for method in (m for m in methods if m in SETTINGS):
                for seed in seeds:
                    if (a.encoder, task, method, setting, seed) not in done_keys(a.results):
                        run_baseline(a.encoder, task, method, setting, seed, a)


if __name__ == "__main__":
    main()

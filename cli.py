"""The `ytune` command: extract features once, train label heads on them many times.

Every user mistake ends as one sentence on stderr and exit code 2, never a traceback. Scripts can
rely on the last stdout line: the cache path for `extract`, a JSON object of metrics for `train`
and `eval`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from ytune.errors import UserError
from ytune.train.config import CONFIG_FLAGS, SETTINGS, HeadSpec

# Only argparse and ytune.errors at import: torch, transformers and the shard backends load in
# the commands that use them, so `ytune --help` and `ytune cache ls` start in a fraction of a second.

# Head settings (--head and --sweep keys), in the order the help lists them.
CACHE_DIR_HELP = "root of the caches, a folder or a store URL such as s3://bucket/caches (default: $YTUNE_CACHE or ~/.cache/ytune)"
STORAGE_HELP = "fsspec storage option for a store URL, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)"
CACHE_HELP = "cache folder, store URL (s3://bucket/caches/ID), or cache id under --cache-dir"
DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: cuda if available)"


def cmd_cache(args: argparse.Namespace) -> None:
    from ytune.cache import store
    from ytune.cache.format import default_root

    if args.verb == "ls":
        caches = store.list_caches(args.cache_dir)
        if not caches:
            print(f"no caches under {args.cache_dir or default_root()}")
        for c in caches:
            if "error" in c:
                print(f"{c['path']}  unreadable: {c['error']}")
                continue
            splits = ", ".join(f"{n} {s['rows']} rows" for n, s in c["splits"].items())
            layers = ",".join(map(str, c["layers"]))
            print(f"{c['path']}  {c['encoder']}  {c['dataset']}  layers {layers} {c['dtype']}  [{splits}]  "
                  f"{c['bytes'] / 1e6:.1f} MB")  # fmt: skip
        return
    path = store.resolve(args.path, args.cache_dir)
    if args.verb == "info":
        print(json.dumps(store.info(path), indent=1))
    elif args.verb == "verify":
        problems = store.verify(path, drop=args.drop)
        for p in problems:
            print(p)
        if problems:
            rebuild = (
                " Damaged shards were dropped: rerun the extraction to rebuild them." if args.drop else ""
            )
            raise UserError(
                f"cache {store.where(path)} failed verification: {len(problems)} problem(s), listed above.{rebuild}"
            )
        from ytune.cache.manifest import read_manifest

        splits = read_manifest(path).splits.values()
        shards = [r for s in splits for r in s.shards.values()]
        labels = sum(len(s.labels) for s in splits)
        print(f"ok: {store.where(path)} ({len(shards)} shards and {labels} label files, "
              f"{sum(r.bytes for r in shards) / 1e6:.1f} MB, checked)")  # fmt: skip
    elif args.verb == "label":
        attach_labels(path, args)
    elif args.verb == "rm":
        where = store.where(path)
        store.remove(path)
        print(f"removed {where}")


def attach_labels(path, args: argparse.Namespace) -> None:
    """A new label column over texts already cached: no extraction. Each cached row takes the label
    of the file's row with the same text (and second text), so a file in any order, or one file
    for several splits, labels them. A cached row the file lacks, or a text the file labels twice
    differently, is refused with the row that shows it, never silently mislabelled."""
    from ytune.cache import store
    from ytune.cache.reader import open_cache
    from ytune.cache.remote import url_of
    from ytune.cache.writer import CacheWriter
    from ytune.extract.data import load_files

    cache = open_cache(path)
    files: dict[str, str] = {}
    for item in args.file:
        split, _, file = item.rpartition("=")
        for s in [split] if split else args.split or []:
            if files.setdefault(s, file) != file:
                raise UserError(f"split {s!r} is given two files ({files[s]} and {file}); give it one.")
        if not split and not args.split:
            raise UserError(f"say which split(s) {file} labels: --split train, or --file train={file}.")
    unknown = [s for s in files if s not in cache.splits]
    if unknown:
        raise UserError(f"cache {path} has no split {unknown[0]!r} (it has: {', '.join(cache.splits)}).")
    where = store.where(path)
    if where.rstrip("/").rsplit("/", 1)[-1] != cache.manifest.cache_id:
        raise UserError(f"{where} is not named after its cache id {cache.manifest.cache_id}; rename it back first.")  # fmt: skip
    data = load_files(files, args.text_field, args.text_pair_field, args.label_field, args.name)
    labels = {}
    for split, file in files.items():
        given = data.splits[split]
        if given.labels is None:
            raise UserError(f"{file} has no labels in column {args.label_field!r}.")
        labels[split] = join_by_text(cache, split, file, given)
    task = data.task
    with CacheWriter(path.parent, cache.identity, cache.manifest.backend) as writer:
        for split, values in labels.items():
            writer.set_labels(split, task.name, values, task.kind, task.label_names, task.metrics)
    if url_of(path):  # written in the mirror, then sent to the store, manifest last
        store.publish(path, url_of(path).rsplit("/", 1)[0])
    print(f"label column {task.name!r} attached to split(s) {', '.join(labels)} of {store.where(path)}")


def join_by_text(cache, split: str, file: str, given) -> list:
    """The file's label for each cached row of `split`, matched by text; runs of whitespace count as
    one space (SST-2's cached texts end in one that a cleaned copy drops)."""
    from ytune.extract.data import text_fingerprint

    cached = cache.texts(split)
    rows = cache.manifest.splits[split].rows
    if cached is None:  # extracted before texts were kept: only the file's row order can tell
        if text_fingerprint(given) != cache.manifest.splits[split].text_fingerprint:
            raise UserError(f"the texts in {file} ({len(given.texts)} rows) are not the {rows} texts of split "
                            f"{split!r}, row for row; this cache predates kept texts, so labels are joined by "
                            "row (extract it again to join by text).")  # fmt: skip
        return list(given.labels)
    texts, pairs = cached
    if (pairs is None) != (given.pairs is None):
        fix = (
            "name the second text's column with --text-pair-field"
            if given.pairs is None
            else "drop --text-pair-field"
        )
        raise UserError(f"split {split!r} holds {'single texts' if pairs is None else 'pairs of texts'}: {fix}.")  # fmt: skip

    def keys(texts: list[str], pairs: list[str] | None) -> list[tuple[str, str]]:
        seconds = pairs or [""] * len(texts)
        return [(" ".join(t.split()), " ".join(p.split())) for t, p in zip(texts, seconds, strict=True)]

    index, twice = {}, set()
    for key, label in zip(keys(given.texts, given.pairs), given.labels, strict=True):
        if index.setdefault(key, label) != label:
            twice.add(key)
    out, wanted = [], keys(texts, pairs)
    for row, key in enumerate(wanted):
        if key in twice:
            raise UserError(f"{file} gives the text {texts[row]!r} (row {row + 1} of split {split!r}) two different labels.")  # fmt: skip
        if key not in index:
            missing = sum(k not in index for k in wanted)
            raise UserError(f"{missing} of the {rows} rows of split {split!r} have no text in {file} ({len(given.texts)} "
                            f"rows); the first is row {row + 1}: {texts[row]!r}.")  # fmt: skip
        out.append(index[key])
    return out


def storage_option(item: str) -> tuple[str, object]:
    """KEY=VALUE; true/false and numbers as JSON reads them, anything else a string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--storage-option takes KEY=VALUE, not {item!r}.")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like -4,-3,-2,-1, not {text!r}"
        ) from None


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def load_dataset_args(args: argparse.Namespace):
    """The dataset an `extract` command names: a GLUE task, or the user's files."""
    from ytune.extract.data import GLUE_TASKS, load_files, load_glue, load_hf

    if args.data and args.dataset:
        raise UserError("give --data files or a --dataset, not both.")
    if args.dataset:
        if args.text_field is None:
            raise UserError("--dataset needs --text-field to name the column that holds the text.")
        return load_hf(args.dataset, args.text_field, args.text_pair_field, args.label_field, args.task,
                       args.split, args.dataset_config, args.limit)  # fmt: skip
    if args.data:
        files = {}
        for item in args.data:
            split, _, path = item.rpartition("=")
            files[split or "train"] = path
        if args.text_field is None:
            raise UserError("--data needs --text-field to name the column that holds the text.")
        return load_files(
            files, args.text_field, args.text_pair_field, args.label_field, args.task, args.limit
        )
    if args.task is None:
        raise UserError(
            f"name a dataset: --task one of {', '.join(GLUE_TASKS)}, --data FILE or --dataset FOLDER with --text-field."
        )
    return load_glue(args.task, args.split or ["train", "validation"], args.data_dir, args.limit)


def cmd_extract(args: argparse.Namespace) -> None:
    from ytune.extract.pipeline import ExtractConfig, extract

    dataset = load_dataset_args(args)
    if args.data and args.split:
        dataset.splits = {s: dataset.splits[s] for s in args.split if s in dataset.splits}
    cfg = ExtractConfig(
        model=args.model,
        weights_dtype=args.weights_dtype,
        layers=[i for group in args.layers for i in group] if args.layers else None,
        max_length=args.max_length,
        dtype=args.dtype,
        backend=args.backend,
        cache_dir=args.cache_dir,
        batch_tokens=args.batch_tokens,
        shard_bytes=int(args.shard_mb * (1 << 20)),
        device=args.device,
        autocast=args.autocast,
    )
    result = extract(dataset, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
        print(result.path)


def head_specs(args: argparse.Namespace) -> list:
    """The heads to train: the one the flags describe, or one per --head, each starting from the flags."""
    from ytune.train.config import parse_pairs, with_settings

    layers = [i for group in args.layers for i in group] if args.layers else None
    config = {f.name: getattr(args, f.name) for f in CONFIG_FLAGS if getattr(args, f.name) is not None}
    base = HeadSpec(args.head_type or "ytuning", args.label, config, layers)
    if not args.head:
        return [base]
    return [
        with_settings(base, {"name": f"head{i}", **parse_pairs(text)}) for i, text in enumerate(args.head)
    ]


def train_config(args: argparse.Namespace):
    from ytune.train.config import TrainConfig

    keys = ("epochs", "batch_size", "lr", "weight_decay", "seed", "patience", "train_split", "eval_split", "device",
            "workers", "threads", "select_on")  # fmt: skip
    return TrainConfig(**{k: getattr(args, k) for k in keys if hasattr(args, k)})


def print_metrics(results: dict[str, dict]) -> None:
    """The last stdout line: one head's metrics, or {head: metrics} for several."""
    only = next(iter(results.values())) if len(results) == 1 else results
    print(json.dumps(only, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> None:
    from ytune.cache import store
    from ytune.train.config import parse_grid
    from ytune.train.sweep import sweep
    from ytune.train.trainer import train

    path = store.resolve(args.cache, args.cache_dir)
    specs = head_specs(args)
    grid = parse_grid(args.sweep or [])
    cfg = train_config(args)
    out = args.out or os.path.join("runs", specs[0].label or path.name)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if grid:
        winner = sweep(path, specs, grid, cfg, out, resume=args.resume, log=log)
        print(f"heads saved under {out}; the winner, {winner['winner']!r}, is what {out} stands for in "
              "ytune eval and ytune predict", file=sys.stderr)  # fmt: skip
        print(json.dumps(winner, sort_keys=True))
        return
    results = train(path, specs, cfg, out, resume=args.resume, log=log)
    print(f"heads saved under {out}", file=sys.stderr)
    print_metrics(results)


def cmd_eval(args: argparse.Namespace) -> None:
    from ytune.cache import store
    from ytune.train.trainer import evaluate

    path = store.resolve(args.cache, args.cache_dir)
    print_metrics(evaluate(args.head, path, args.split, train_config(args)))


def cmd_predict(args: argparse.Namespace) -> None:
    from ytune.predict import Predictor

    if args.input and args.texts:
        raise UserError("give texts to label as arguments or with --input FILE, not both.")
    if args.input:
        from ytune.extract.data import load_files

        split = load_files({"input": args.input}, args.text_field, args.text_pair_field).splits["input"]
        texts, pairs = split.texts, split.pairs
    elif args.texts:
        texts, pairs = args.texts, None
    else:
        raise UserError("give texts to label, as arguments or with --input FILE --text-field COLUMN.")
    predictor = Predictor(args.head, args.model, args.device)
    answers = predictor.predict(texts, pairs, progress=None if args.input else False)
    for i, answer in enumerate(answers):
        item = {"row": i, "text": texts[i], **({"pair": pairs[i]} if pairs else {}), "predictions": answer}
        print(json.dumps(item, ensure_ascii=False))


def cmd_demo(args: argparse.Namespace) -> None:
    from ytune.demo import format_table, run_demo

    result = run_demo(args.data_dir, args.cache_dir, args.out, args.train_rows or None, args.epochs,
                      log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    print(format_table(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ytune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser(
        "extract",
        help="run the frozen encoder over a dataset once and cache the chosen layers",
        description="Run the frozen encoder over a dataset once and cache the chosen layers' "
        "features; the last stdout line is the cache's path. Rerun the same command to "
        "resume an interrupted extraction.",
    )
    ex.set_defaults(run=cmd_extract)
    src = ex.add_argument_group("data")
    src.add_argument(
        "--task",
        help="a GLUE task (sst2, cola, mrpc, rte, stsb, wnli, qnli, qqp, mnli), or the name of "
        "your task with --data or --dataset",
    )
    src.add_argument(
        "--dataset",
        metavar="NAME_OR_FOLDER",
        help="a Hugging Face datasets source: a folder written by save_to_disk, or a hub dataset",
    )
    src.add_argument("--dataset-config", help="the hub dataset's configuration (with --dataset)")
    src.add_argument(
        "--data-dir", help="local GLUE folder in the standard layout (default: $YTUNE_GLUE_DIR, else the hub)"
    )
    src.add_argument(
        "--data",
        action="append",
        metavar="[SPLIT=]PATH",
        help="a CSV/TSV/JSON/JSONL/Parquet file of one split (bare PATH: train); repeat per split",
    )
    src.add_argument("--text-field", help="column holding the text (with --data or --dataset)")
    src.add_argument(
        "--text-pair-field", help="column holding the second text of pairs (with --data or --dataset)"
    )
    src.add_argument("--label-field", help="column holding the label (with --data or --dataset)")
    src.add_argument(
        "--split", type=name_list, help="splits to extract, comma-separated (GLUE default: train,validation)"
    )
    src.add_argument(
        "--limit", type=int, help="only the first N rows of each split (a quick run; another cache)"
    )
    enc = ex.add_argument_group("encoder and features")
    enc.add_argument(
        "--model",
        help="hub id or local folder of a transformers encoder (default: the bundled all-MiniLM-L6-v2)",
    )
    enc.add_argument(
        "--weights-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="load the encoder's weights in this dtype (default: as saved); bfloat16 halves an XXL model's memory",
    )
    enc.add_argument(
        "--layers",
        type=int_list,
        nargs="+",
        help="hidden states to cache, transformers' numbering (0 = embeddings, -1 = last): --layers -2 -1, or "
        "--layers=-2,-1 (default: the middle third of the depth, at most four spread across it: 2 3 4 of "
        "MiniLM's 6 layers, 16 21 27 32 of a 48-layer encoder; what the heads' defaults were measured on)",
    )
    enc.add_argument(
        "--max-length", type=int, default=128, help="tokens per row, longer rows truncated (default: 128)"
    )
    enc.add_argument(
        "--dtype", choices=["float16", "bfloat16"], default="float16", help="storage dtype (default: float16)"
    )
    enc.add_argument("--device", help=DEVICE_HELP)
    enc.add_argument(
        "--autocast", choices=["bf16", "fp16", "none"], default="bf16", help="on CUDA (default: bf16)"
    )
    enc.add_argument(
        "--batch-tokens", type=int, help="padded tokens per encoder call (default: 4096 on CPU, 32768 on GPU)"
    )
    out = ex.add_argument_group("cache")
    out.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    out.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help=STORAGE_HELP)
    out.add_argument(
        "--backend", choices=["zarr", "hdf5"], default="zarr", help="shard format (default: zarr)"
    )
    out.add_argument("--shard-mb", type=float, default=128, help="target shard size in MB (default: 128)")

    tr = sub.add_parser(
        "train",
        help="train Y-Tuning heads (or a linear probe) on a cache",
        description="Train label heads on a cache without loading the encoder. The flags describe one head; "
        "--head KEY=VALUE,... (repeatable) trains several in one pass over the data, each starting from the "
        f"flags; --sweep KEY=V1,V2,... (repeatable) trains the grid of their values as heads of one pass and "
        f"picks a winner. Keys: {', '.join(SETTINGS)}; layers as -1, -4:-1 (a range) or 0+3+6. The last "
        "stdout line is a JSON object of the best epoch's metrics on the evaluation split ({head: metrics} "
        "for several heads; for a sweep, the winner's name, settings and metrics).",
    )
    tr.set_defaults(run=cmd_train)
    tr.add_argument("--cache", required=True, help=CACHE_HELP)
    tr.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    tr.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help=STORAGE_HELP)
    tr.add_argument("--label", help="label column to learn (default: the one extraction attached)")
    tr.add_argument("--out", help="folder for checkpoints and logs (default: runs/<label>)")
    head = tr.add_argument_group("head")
    head.add_argument(
        "--head", action="append", metavar="KEY=VALUE,...", help="one head of several (repeatable)"
    )
    head.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2,...",
        help="sweep a setting over these values (repeatable: the grid is the product); heads are named "
        "after their settings",
    )
    head.add_argument(
        "--select-on",
        choices=["holdout", "validation"],
        help="choose each head's best epoch (and a sweep's winner) on held-out training rows, or on the "
        "evaluation split (default: holdout for a sweep, else validation)",
    )
    head.add_argument(
        "--layers", type=int_list, nargs="+", help="hidden states to read: -1, or -2 -1 (default: all cached)"
    )
    for f in CONFIG_FLAGS:  # every HeadConfig setting, with the help its field carries
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        head.add_argument(f"--{f.name.replace('_', '-')}", type=kind, choices=f.metadata.get("choices"),
                          help=f.metadata["help"])  # fmt: skip
    opt = tr.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs", type=int, help="(default: by the training set's size: 60,000 examples' worth, 3 to 10)"
    )
    opt.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4; regression 1e-3)")
    opt.add_argument("--weight-decay", type=float, default=0.01, help="(default: 0.01)")
    opt.add_argument(
        "--patience", type=int, default=0, help="stop a head after N epochs without improvement (0: never)"
    )
    opt.add_argument("--seed", type=int, default=0, help="(default: 0)")
    opt.add_argument("--train-split", default="train", help="(default: train)")
    opt.add_argument("--eval-split", default="validation", help="(default: validation)")
    opt.add_argument("--device", help=DEVICE_HELP)
    opt.add_argument(
        "--workers", type=int, default=0, help="DataLoader processes reading the cache (default: 0)"
    )
    opt.add_argument(
        "--resume", action="store_true", help="continue the run in --out after its last finished epoch"
    )

    ev = sub.add_parser("eval", help="evaluate trained heads on a split of a cache",
                        description="Metrics of trained heads on a labelled split of any cache in their feature "
                        "space; the last stdout line is a JSON object of metrics.")  # fmt: skip
    ev.set_defaults(run=cmd_eval)
    ev.add_argument("--head", action="append", required=True, help="a trained head's folder (repeatable)")
    ev.add_argument("--cache", required=True, help=CACHE_HELP)
    ev.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    ev.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help=STORAGE_HELP)
    ev.add_argument("--split", default="validation", help="(default: validation)")
    ev.add_argument("--device", help=DEVICE_HELP)
    ev.add_argument("--batch-size", type=int, default=64, help="(default: 64)")

    pr = sub.add_parser(
        "predict",
        help="label new texts with one or more trained heads",
        description="Label texts with trained heads: each text goes through the encoder once and every head "
        "answers from the same features. Prints one JSON object per input line.",
    )
    pr.set_defaults(run=cmd_predict)
    pr.add_argument("texts", nargs="*", help="texts to label (or --input)")
    pr.add_argument("--head", action="append", required=True, help="a trained head's folder (repeatable)")
    pr.add_argument("--input", help="a CSV/TSV/JSON/JSONL/Parquet file of texts")
    pr.add_argument("--text-field", default="text", help="column of --input holding the text (default: text)")
    pr.add_argument("--text-pair-field", help="column of --input holding the second text of pairs")
    pr.add_argument(
        "--model", help="the encoder's folder or hub id, if not where the heads' training cache found it"
    )
    pr.add_argument("--device", help=DEVICE_HELP)

    de = sub.add_parser(
        "demo",
        help="the whole pipeline on SST-2 with the bundled encoder",
        description="Extract SST-2 with the bundled all-MiniLM-L6-v2 (or reuse its cache), train a Y-Tuning "
        "head and the linear probe in one pass, and print their accuracy, parameters and costs.",
    )
    de.set_defaults(run=cmd_demo)
    de.add_argument(
        "--data-dir", help="local GLUE folder (default: $YTUNE_GLUE_DIR, else the Hugging Face hub)"
    )
    de.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    de.add_argument("--out", default="runs/demo", help="folder for the heads (default: runs/demo)")
    de.add_argument(
        "--train-rows", type=int, default=20000, help="training rows to use, 0 for all (default: 20000)"
    )
    de.add_argument("--epochs", type=int, default=3, help="(default: 3)")

    cache = sub.add_parser("cache", help="list, inspect, verify or remove caches")
    cache.set_defaults(run=cmd_cache)
    verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("ls", help="list the caches under the cache directory")
    for verb, help_text in [
        ("info", "print a cache's manifest summary as JSON"),
        ("verify", "recompute every checksum; exit 2 naming each damaged or missing shard"),
        ("rm", "delete a cache (refused while it is being written)"),
    ]:
        verbs.add_parser(verb, help=help_text).add_argument("path", help=CACHE_HELP)
    lab = verbs.add_parser(
        "label",
        help="attach a new label column (a new task) to a cached split, without extracting again",
        description="Attach a label column to cached splits. Each cached row takes the label of the file's "
        "row with the same text (runs of whitespace count as one space), so the file's order does not "
        "matter and it may hold other texts too; every cached row of the split must be in it.",
    )
    lab.add_argument("path", help=CACHE_HELP)
    lab.add_argument(
        "--file",
        action="append",
        required=True,
        metavar="[SPLIT=]PATH",
        help="CSV/TSV/JSON/JSONL/Parquet file of texts and labels; SPLIT=PATH labels that split, a bare "
        "PATH the splits named by --split; repeat for several",
    )
    lab.add_argument("--split", action="append", help="split(s) a bare --file PATH labels")
    lab.add_argument("--name", required=True, help="name of the new label column (the task)")
    lab.add_argument("--text-field", required=True, help="column holding the text")
    lab.add_argument("--text-pair-field", help="column holding the second text of pairs")
    lab.add_argument("--label-field", required=True, help="column holding the label")
    verbs.choices["verify"].add_argument(
        "--drop",
        action="store_true",
        help="take damaged shards out of the manifest, so extract rebuilds them",
    )
    # Before the verb or after it: `ytune cache --cache-dir X ls` and `ytune cache ls --cache-dir X`.
    cache.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    cache.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help=STORAGE_HELP)
    for p in verbs.choices.values():
        p.add_argument("--cache-dir", default=argparse.SUPPRESS, help=CACHE_DIR_HELP)
        p.add_argument("--storage-option", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                       help=STORAGE_HELP)  # fmt: skip
    return parser


def joined_layer_lists(argv: Sequence[str]) -> list[str]:
    """`--layers -4,-1` as `--layers=-4,-1`: argparse takes a lone negative number (-1) for a value
    but a negative list for an unknown option, and users type both."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--layers" and re.fullmatch(r"-\d+(,\s*-?\d+)+,?", token):
            out[-1] = f"--layers={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(joined_layer_lists(sys.argv[1:] if argv is None else argv))
    try:
        if getattr(args, "storage_option", None):
            from ytune.cache.remote import set_storage_options

            set_storage_options(dict(storage_option(item) for item in args.storage_option))
        args.run(args)
    except UserError as e:
        print(f"ytune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ytune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ytune cache info X | head`: the reader had enough, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())

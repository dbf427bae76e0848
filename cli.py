"""The `ytune` command: extract features once, train label heads on them many times.

Every user mistake ends as one sentence on stderr and exit code 2, never a traceback. Scripts can
rely on the last stdout line: the cache path for `extract`, a JSON object of metrics for `train`
and `eval`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from ytune.cache import store
from ytune.cache.format import default_root
from ytune.errors import UserError


def cmd_cache(args: argparse.Namespace) -> None:
    if args.verb == "ls":
        caches = store.list_caches(args.cache_dir)
        if not caches:
            print(f"no caches under {args.cache_dir or default_root()}")
        for c in caches:
            splits = ", ".join(f"{n} {s['rows']} rows" for n, s in c["splits"].items())
            print(f"{c['path']}  {c['encoder']}  {c['dataset']}  [{splits}]  {c['bytes'] / 1e6:.1f} MB")
        return
    path = store.resolve(args.path, args.cache_dir)
    if args.verb == "info":
        print(json.dumps(store.info(path), indent=1))
    elif args.verb == "verify":
        problems = store.verify(path)
        for p in problems:
            print(p)
        if problems:
            raise UserError(f"cache {path} failed verification: {len(problems)} problem(s), listed above.")
        print(f"ok: {path}")
    elif args.verb == "rm":
        store.remove(path)
        print(f"removed {path}")


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
    from ytune.extract.data import GLUE_TASKS, load_files, load_glue

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
            f"name a dataset: --task one of {', '.join(GLUE_TASKS)}, or --data FILE with --text-field."
        )
    return load_glue(args.task, args.split or ["train", "validation"], args.data_dir, args.limit)


def cmd_extract(args: argparse.Namespace) -> None:
    from ytune.extract.pipeline import ExtractConfig, extract

    dataset = load_dataset_args(args)
    if args.data and args.split:
        dataset.splits = {s: dataset.splits[s] for s in args.split if s in dataset.splits}
    cfg = ExtractConfig(
        model=args.model,
        layers=[i for group in args.layers for i in group],
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


def not_built(name: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        raise UserError(f"`ytune {name}` is not built yet.")

    return run


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
        "your task with --data",
    )
    src.add_argument(
        "--data-dir", help="local GLUE folder in the standard layout (default: $YTUNE_GLUE_DIR, else the hub)"
    )
    src.add_argument(
        "--data",
        action="append",
        metavar="[SPLIT=]PATH",
        help="a CSV/TSV/JSON/JSONL/Parquet file of one split (bare PATH: train); repeat per split",
    )
    src.add_argument("--text-field", help="column holding the text (with --data)")
    src.add_argument("--text-pair-field", help="column holding the second text of pairs (with --data)")
    src.add_argument("--label-field", help="column holding the label (with --data)")
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
        "--layers",
        type=int_list,
        nargs="+",
        default=[[-1]],
        help="hidden states to cache, transformers' "
        "numbering (0 = embeddings, -1 = last): --layers -2 -1, or --layers=-2,-1 (default: -1)",
    )
    enc.add_argument(
        "--max-length", type=int, default=128, help="tokens per row, longer rows truncated (default: 128)"
    )
    enc.add_argument(
        "--dtype", choices=["float16", "bfloat16"], default="float16", help="storage dtype (default: float16)"
    )
    enc.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    enc.add_argument(
        "--autocast", choices=["bf16", "fp16", "none"], default="bf16", help="on CUDA (default: bf16)"
    )
    enc.add_argument(
        "--batch-tokens", type=int, help="padded tokens per encoder call (default: 4096 on CPU, 32768 on GPU)"
    )
    out = ex.add_argument_group("cache")
    out.add_argument("--cache-dir", help="root of the caches (default: $YTUNE_CACHE or ~/.cache/ytune)")
    out.add_argument(
        "--backend", choices=["zarr", "hdf5"], default="zarr", help="shard format (default: zarr)"
    )
    out.add_argument("--shard-mb", type=float, default=128, help="target shard size in MB (default: 128)")

    for name, help_text in [
        ("train", "train Y-Tuning heads (or a linear probe) on a cache"),
        ("eval", "evaluate a trained head on a split of a cache"),
        ("predict", "label new texts with one or more trained heads"),
        ("demo", "the whole pipeline on SST-2 with the bundled encoder"),
    ]:
        sub.add_parser(name, help=help_text).set_defaults(run=not_built(name))

    cache = sub.add_parser("cache", help="list, inspect, verify or remove caches")
    cache.set_defaults(run=cmd_cache)
    verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("ls", help="list the caches under the cache directory")
    for verb, help_text in [
        ("info", "print a cache's manifest summary as JSON"),
        ("verify", "recompute every checksum; exit 2 naming each damaged or missing shard"),
        ("rm", "delete a cache (refused while it is being written)"),
    ]:
        verbs.add_parser(verb, help=help_text).add_argument(
            "path", help="cache folder, or cache id under --cache-dir"
        )
    for p in [cache, *verbs.choices.values()]:
        p.add_argument(
            "--cache-dir", default=None, help="root of the caches (default: $YTUNE_CACHE or ~/.cache/ytune)"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as e:
        print(f"ytune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ytune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `ytune` command: extract features once, train label heads on them many times.

Every user mistake ends as one sentence on stderr and exit code 2, never a traceback. Scripts can
rely on the last stdout line: the cache path for `extract`, a JSON object of metrics for `train`
and `eval`. Settings of extraction and training are flags read off their dataclasses' fields
(add_flags), so each default and help is written once, beside its field.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from ytune.cache import store
from ytune.demo import DemoConfig
from ytune.errors import UserError
from ytune.extract.config import DataSource, ExtractConfig
from ytune.extract.files import load_files
from ytune.train.config import (
    SETTINGS,
    HeadConfig,
    HeadSpec,
    TrainConfig,
    add_flags,
    given,
    head_specs,
    joined_layer_lists,
    parse_grid,
)

# Only argparse and torch-free ytune modules at import: torch, transformers and the
# shard backends load in the commands that use them, so `ytune --help` starts in a fraction of a second.

CACHE_HELP = "cache folder, store URL (s3://bucket/caches/ID), or cache id under --cache-dir"
CACHE_DIR_HELP = "root of the caches, a folder or a store URL such as s3://bucket/caches (default: $YTUNE_CACHE or ~/.cache/ytune)"
STORAGE_HELP = "fsspec storage option for a store URL, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)"
THREADS_HELP = "torch threads on CPU (default: %(default)s): a head's ops are small, and with more threads each waits for a free core, which costs far more than it gains on a busy machine (benchmarks/RESULTS.md 1)"
SWEEP_HELP = "sweep a setting over these values (repeatable: the grid is the product); heads are named after their settings"
OUT_HELP = "folder for checkpoints and logs (default: runs/<--label>, or runs/<cache id> without --label)"
CACHE_CMD_HELP = "list, inspect, verify or remove caches, or attach a label column to one"
LABEL_FILE_HELP = "CSV/TSV/JSON/JSONL/Parquet file of texts and labels; SPLIT=PATH labels that split, a bare PATH the splits named by --split; repeat for several"


log = logging.getLogger(__name__)  # what the user reads as it happens (show_progress); stdout is for scripts


class _ToStderr(logging.Handler):
    """The library's progress lines (the `ytune` loggers, INFO and up) as plain lines on stderr, to
    whatever sys.stderr is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def show_progress() -> None:
    logger = logging.getLogger("ytune")
    if not any(isinstance(h, _ToStderr) for h in logger.handlers):
        logger.addHandler(_ToStderr())
        logger.setLevel(logging.INFO)


def cache_ls(args: argparse.Namespace) -> None:
    """List the caches under the cache directory."""
    print("\n".join(store.listing(args.cache_dir)))


def cache_info(args: argparse.Namespace) -> None:
    """Print a cache's manifest summary as JSON."""
    print(json.dumps(store.info(store.resolve(args.path, args.cache_dir)), indent=1))


def cache_verify(args: argparse.Namespace) -> None:
    """Recompute every checksum; exit 2 naming each damaged or missing shard."""
    path = store.resolve(args.path, args.cache_dir)
    problems = store.verify(path, drop=args.drop)
    if problems:
        print("\n".join(problems))
        rebuild = " Damaged shards were dropped: rerun the extraction to rebuild them." if args.drop else ""
        raise UserError(
            f"cache {store.where(path)} failed verification: {len(problems)} problem(s), listed above.{rebuild}"
        )
    print(f"ok: {store.where(path)} ({store.contents(path)}, checked)")


def cache_rm(args: argparse.Namespace) -> None:
    """Delete a cache (refused while it is being written)."""
    path = store.resolve(args.path, args.cache_dir)
    where = store.where(path)
    store.remove(path)
    print(f"removed {where}")


def cache_label(args: argparse.Namespace) -> None:
    """Attach a new label column (a new task) to cached splits, without extracting again.

    Each cached row takes the label of the file's row with the same text (runs of whitespace count
    as one space), so the file's order does not matter and it may hold other texts too; every
    cached row of the split must be in it."""
    from ytune.cache.labels import attach_labels, label_files, open_to_label

    path = store.resolve(args.path, args.cache_dir)
    files = label_files(args.file, args.split)
    cache = open_to_label(path, list(files), args.name, args.replace)
    data = load_files(files, args.text_field, args.text_pair_field, args.label_field, args.name)
    for split, file in files.items():
        if data.splits[split].labels is None:
            raise UserError(f"{file} has no labels in column {args.label_field!r}.")
    attach_labels(path, cache, data.task, {s: (file, data.splits[s]) for s, file in files.items()})
    print(f"label column {data.task.name!r} attached to split(s) {', '.join(files)} of {store.where(path)}")


def cmd_extract(args: argparse.Namespace) -> None:
    """Run the frozen encoder over a dataset once and cache the chosen layers.

    The last stdout line is the cache's path. Rerun the same command to resume an interrupted
    extraction."""
    from ytune.extract.pipeline import extract

    cfg = ExtractConfig(**given(ExtractConfig, args), cache_dir=args.cache_dir, device=args.device)
    data = DataSource(**given(DataSource, args), data_dir=args.data_dir).load()
    result = extract(data, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
        if all(split.labels is None for split in data.splits.values()):
            why = " (no --label-field)" if args.label_field is None and (args.data or args.dataset) else ""
            log.info(f"note: no labels were attached{why}; attach them with ytune cache label")
        print(result.path)


def print_metrics(results: dict[str, dict]) -> None:
    """The last stdout line: one head's metrics, or {head: metrics} for several."""
    only = next(iter(results.values())) if len(results) == 1 else results
    print(json.dumps(only, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> None:
    """Train Y-Tuning heads (or a linear probe) on a cache.

    Heads train on the cached features, without the encoder. The flags describe one head; --head
    KEY=VALUE,... (repeatable) trains several in one pass over the data, each starting from the
    flags; --sweep KEY=V1,V2,... (repeatable) trains the grid of their values as heads of one pass
    and picks a winner. The last stdout line is a JSON object of the best epoch's metrics on the
    evaluation split ({head: metrics} for several heads; for a sweep, the winner's name, settings
    and metrics)."""
    from ytune.device import configure_cpu
    from ytune.train.sweep import sweep
    from ytune.train.trainer import train

    path = store.resolve(args.cache, args.cache_dir)
    base = HeadSpec(args.head_type or "ytuning", config=given(HeadConfig, args), **given(HeadSpec, args))
    specs, grid = head_specs(base, args.head), parse_grid(args.sweep or [])
    cfg = TrainConfig(**given(TrainConfig, args), device=args.device)
    out = args.out or os.path.join("runs", specs[0].label or path.name)
    configure_cpu(args.threads, args.device)
    if grid:
        winner = sweep(path, specs, grid, cfg, out, resume=args.resume)
        stands = f"the winner, {winner['winner']!r}, is what {out} stands for in ytune eval and ytune predict"
        log.info(f"heads saved under {out}; {stands}")
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank knows the winner: one says it
            print(json.dumps(winner, sort_keys=True))
        return
    results = train(path, specs, cfg, out, resume=args.resume)
    log.info(f"heads saved under {out}")
    print_metrics(results)


def cmd_eval(args: argparse.Namespace) -> None:
    """Evaluate trained heads on a split of a cache.

    Metrics of trained heads on a labelled split of any cache in their feature space, each scored
    against its own label column or the one --label names; the last stdout line is a JSON object of
    metrics."""
    from ytune.device import configure_cpu
    from ytune.train.evaluate import evaluate

    path = store.resolve(args.cache, args.cache_dir)
    configure_cpu(args.threads, args.device)
    cfg = TrainConfig(batch_size=args.batch_size, device=args.device)
    print_metrics(evaluate(args.head, path, args.split, cfg, label=args.label))


def cmd_predict(args: argparse.Namespace) -> None:
    """Label new texts with one or more trained heads.

    Each text goes through the encoder once and every head answers from the same features. A --head
    folder may be a head's, a sweep's (its winner) or a run's (all its heads). Prints one JSON
    object per input, rows counted from 1 as in error messages; an empty text is refused."""
    from ytune.predict import Predictor

    if args.input and args.texts:
        raise UserError("give texts to label as arguments or with --input FILE, not both.")
    if args.input:
        split = load_files({"input": args.input}, args.text_field, args.text_pair_field).splits["input"]
        texts, pairs = split.texts, split.pairs
    elif args.texts:
        texts, pairs = args.texts, None
    else:
        raise UserError("give texts to label, as arguments or with --input FILE --text-field COLUMN.")
    predictor = Predictor(args.head, args.model, args.device)
    answers = predictor.predict(texts, pairs, progress=None if args.input else False)
    for i, answer in enumerate(answers):
        pair = {"pair": pairs[i]} if pairs else {}
        print(json.dumps({"row": i + 1, "text": texts[i], **pair, "predictions": answer}, ensure_ascii=False))


def cmd_demo(args: argparse.Namespace) -> None:
    """The whole pipeline on SST-2 with the bundled encoder.

    Extract SST-2 with the bundled all-MiniLM-L6-v2 (or reuse its cache), train a Y-Tuning head and
    the linear probe in one pass, and print their accuracy, parameters and costs."""
    from ytune.demo import demo_cache, demo_heads, format_table
    from ytune.device import configure_cpu

    cfg = DemoConfig(**given(DemoConfig, args), data_dir=args.data_dir, cache_dir=args.cache_dir)
    data, cache = demo_cache(cfg)
    configure_cpu(args.threads)  # after extraction, which keeps torch's own thread count
    print(format_table(demo_heads(cfg, data, cache)))


def shared_flags() -> dict[str, argparse.ArgumentParser]:
    """The flags several commands share, each defined here once; a command takes them as parents."""
    names = ("store", "verb", "cache", "path", "device", "threads", "heads", "glue")
    flags = {name: argparse.ArgumentParser(add_help=False, allow_abbrev=False) for name in names}
    # A verb's copy (`ytune cache ls --cache-dir X`) leaves a value given before the verb alone.
    for name, default in (("store", None), ("verb", argparse.SUPPRESS)):
        flags[name].add_argument("--cache-dir", default=default, help=CACHE_DIR_HELP)
        options = {"action": "append", "default": default, "metavar": "KEY=VALUE", "help": STORAGE_HELP}
        flags[name].add_argument("--storage-option", **options)
    flags["cache"].add_argument("--cache", required=True, help=CACHE_HELP)
    flags["path"].add_argument("path", help=CACHE_HELP)
    flags["device"].add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    flags["threads"].add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    flags["heads"].add_argument("--head", action="append", required=True, help="a head's folder (repeatable)")
    flags["glue"].add_argument("--data-dir", help="GLUE folder (default: $YTUNE_GLUE_DIR, else the hub)")
    return flags


def command(sub, name: str, run, parents: list) -> argparse.ArgumentParser:
    """A command that `run` carries out; its help is the first line of run's docstring, its
    description the whole docstring. It refuses abbreviated flags (`--epoch` is not `--epochs`), and
    main has it report a flag it does not know, with its own usage."""
    summary = run.__doc__.split("\n")[0]
    parser = sub.add_parser(name, parents=parents, help=summary, description=run.__doc__, allow_abbrev=False)
    parser.set_defaults(run=run, parser=parser)
    return parser


def add_commands(sub, flags: dict) -> None:
    """extract, train, eval, predict and demo."""
    ex = command(sub, "extract", cmd_extract, [flags["glue"], flags["store"], flags["device"]])
    add_flags(ex.add_argument_group("data"), DataSource)
    add_flags(ex.add_argument_group("encoder, features and shards"), ExtractConfig)
    tr = command(sub, "train", cmd_train, [flags[n] for n in ("cache", "store", "device", "threads")])
    tr.description += f" Keys: {', '.join(SETTINGS)}; layers as -1, -4:-1 (a range) or 0+3+6."
    tr.add_argument("--out", help=OUT_HELP)
    tr.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    head = tr.add_argument_group("head")
    head.add_argument("--head", action="append", metavar="KEY=VALUE,...", help="one head of several; repeat")
    head.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...", help=SWEEP_HELP)
    add_flags(head, HeadSpec)
    add_flags(head, HeadConfig)
    add_flags(tr.add_argument_group("optimisation"), TrainConfig)
    ev = command(sub, "eval", cmd_eval, [flags[n] for n in ("heads", "cache", "store", "device", "threads")])
    ev.add_argument("--split", default=TrainConfig.eval_split, help="(default: %(default)s)")
    ev.add_argument("--label", help="label column to score every head against (default: each head's own)")
    ev.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    pr = command(sub, "predict", cmd_predict, [flags["heads"], flags["device"]])
    pr.add_argument("texts", nargs="*", help="texts to label (or --input)")
    pr.add_argument("--input", help="a CSV/TSV/JSON/JSONL/Parquet file of texts")
    pr.add_argument("--text-field", default="text", help="--input's text column (default: %(default)s)")
    pr.add_argument("--text-pair-field", help="column of --input holding the second text of pairs")
    pr.add_argument("--model", help="the encoder's folder or hub id, if not where the heads' cache found it")
    de = command(sub, "demo", cmd_demo, [flags["glue"], flags["store"], flags["threads"]])
    add_flags(de, DemoConfig)


def add_cache(sub, flags: dict) -> None:
    cache = sub.add_parser(
        "cache", parents=[flags["store"]], help=CACHE_CMD_HELP, description=CACHE_CMD_HELP, allow_abbrev=False
    )
    verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")
    command(verbs, "ls", cache_ls, [flags["verb"]])
    command(verbs, "info", cache_info, [flags["path"], flags["verb"]])
    verify = command(verbs, "verify", cache_verify, [flags["path"], flags["verb"]])
    verify.add_argument("--drop", action="store_true", help="drop damaged shards, so extract rebuilds them")
    command(verbs, "rm", cache_rm, [flags["path"], flags["verb"]])
    label = command(verbs, "label", cache_label, [flags["path"], flags["verb"]])
    label.add_argument("--file", action="append", required=True, metavar="[SPLIT=]PATH", help=LABEL_FILE_HELP)
    label.add_argument("--split", action="append", help="split(s) a bare --file PATH labels")
    label.add_argument("--name", required=True, help="name of the new label column (the task)")
    label.add_argument("--text-field", required=True, help="column holding the text")
    label.add_argument("--text-pair-field", help="column holding the second text of pairs")
    label.add_argument("--label-field", required=True, help="column holding the label")
    label.add_argument("--replace", action="store_true", help="overwrite a label column of that name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ytune", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.set_defaults(storage_option=None)  # for the commands without the store flags
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    flags = shared_flags()
    add_commands(sub, flags)
    add_cache(sub, flags)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments; a flag the command does not know ends with the command's own
    usage, not the top level's."""
    args, unknown = build_parser().parse_known_args(joined_layer_lists(argv))
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def interrupted(args: argparse.Namespace) -> str:
    """How to carry on from an interrupted command."""
    if args.command not in ("extract", "train"):
        return ""
    again = " with --resume" if args.command == "train" and not args.resume else ""
    return f"; rerun the same command{again} to resume where it stopped"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    show_progress()
    try:
        if args.storage_option:
            from ytune.cache.remote import parse_storage_options, set_storage_options

            set_storage_options(parse_storage_options(args.storage_option))
        args.run(args)
    except UserError as e:
        print(f"ytune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ytune: interrupted{interrupted(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ytune cache info X | head`: the reader had enough, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `ytune` command: extract features once, train label heads on them many times.

Every user mistake ends as one sentence on stderr and exit code 2, never a traceback. Scripts can
rely on the last stdout line: the cache path for `extract`, a JSON object of metrics for `train`
and `eval`.
"""

from __future__ import annotations

import argparse
import json
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


def not_built(name: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        raise UserError(f"`ytune {name}` is not built yet.")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ytune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in [
        ("extract", "run the frozen encoder over a dataset once and cache the chosen layers"),
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
        verbs.add_parser(verb, help=help_text).add_argument("path", help="cache folder, or cache id under --cache-dir")
    for p in [cache, *verbs.choices.values()]:
        p.add_argument("--cache-dir", default=None, help="root of the caches (default: $YTUNE_CACHE or ~/.cache/ytune)")
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

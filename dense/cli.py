"""The ``dense`` command.

Each feature module registers its own subcommands through an ``add_cli(sub, eval_sub)`` function (listed in
``REGISTRARS``), so this file only builds the parser and turns errors into one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# "module:function" pairs; each function adds its subparsers and sets ``func`` on them.
REGISTRARS = (
    "dense.cache:add_cli",  # dense extract
    "probes.cli:add_cli",  # dense probe train | eval
    "dense.heatmap:add_cli",  # dense heatmap, dense eval openvocab
    "dense.localize:add_cli",  # dense eval refer
    "dense.demo:add_cli",  # dense demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dense",
        description="Dense features from SigLIP 2 So400m: extraction, linear probes, open-vocabulary heatmaps and "
                    "segmentation, referring expressions, COCO-style evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    eval_parser = sub.add_parser("eval", help="evaluate on a COCO-style dataset (openvocab, refer)")
    eval_sub = eval_parser.add_subparsers(dest="eval_command", metavar="TASK")
    eval_parser.set_defaults(func=lambda args: eval_parser.print_help() or 2)
    for entry in REGISTRARS:
        module_name, func_name = entry.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # a part not built yet
        getattr(module, func_name)(sub, eval_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dense: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users, the traceback with --debug
        if args.debug:
            raise
        print(f"dense: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

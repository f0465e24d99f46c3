"""The ``dense`` command: every argparse definition lives in this package, one file per command group.

Building the parser imports no model code (no torch, no transformers): ``dense --help`` and argument errors are
instant. Each command's ``run`` function imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys

from dense.cli import compile_check, demo, evaluate, explore, extract, probe, query, upsampler
from dense.cli._args import Parser, check, check_layers, common_parent, opt, set_command_line
from dense.errors import DenseError

GROUPS = (extract, probe, upsampler, query, evaluate, demo, explore, compile_check)  # each: add(sub, parent)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dense")
    except Exception:  # not installed (run from a checkout)
        from dense import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parent = common_parent()
    parser = Parser(
        prog="dense", allow_abbrev=False,
        description="Dense features from SigLIP 2 So400m: extraction, linear probes, open-vocabulary heatmaps and "
                    "segmentation, referring expressions, COCO-style evaluation.",
        epilog="`dense COMMAND --help` describes each command. A malformed command line exits 2; dense's errors are "
               "one line, exit 1 (--debug shows the traceback).")
    opt(parser, "--debug", action="store_true")
    opt(parser, "--version", action="version", version=f"dense {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add(sub, parent)
    parser.set_defaults(_parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    set_command_line(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # a misspelled flag: the usage of the command it was given to, not the top level's
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    check(args)  # flags that need another flag: exit 2, before any work
    if getattr(args, "func", None) is None:
        args._parser.print_help()
        return 2
    check_layers(args)  # block indices against the model's depth, read from its config: exit 2 before it is built
    if not any(k.endswith("_action") and v is None for k, v in vars(args).items()):  # not a group's bare help
        from dense.device import set_threads

        set_threads(args.threads)  # before any model code: --threads, or the default that a shared machine needs
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return rc
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("dense: interrupted", file=sys.stderr)
        return 130
    except (DenseError, OSError, MemoryError) as e:  # dense's own errors, the system's: one line for users
        if args.debug:
            raise
        print(f"dense: error: {one_line(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError" or args.debug:  # torch.cuda.OutOfMemoryError (torch not imported)
            raise
        print(f"dense: error: {one_line(e)}", file=sys.stderr)
        return 1
    # anything else is a bug: its traceback shows (Python exits 1)


def _stdout_closed() -> int:
    """The reader of stdout went away (``dense ... | head -1``): every file was written before anything was printed
    (``_args.finish``), so only the rest of the text is lost. Python's recommended handling (the ``signal`` module's
    note on SIGPIPE): point stdout at devnull so the interpreter's final flush cannot fail again, and exit 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (captured in tests)
        pass
    return 1


def one_line(e: BaseException) -> str:
    """The one line a user reads for a :class:`~dense.errors.DenseError` or an ``OSError`` (naming its file)."""
    if isinstance(e, OSError) and e.filename and not isinstance(e, DenseError):
        why = e.strerror or type(e).__name__
        if e.errno and why == os.strerror(e.errno):  # the system's words, lower-cased after the file name
            why = why[:1].lower() + why[1:]
        # a rename over a folder (an atomic write's last step) names the target, not dense's temp file
        target = e.filename2 if isinstance(e, IsADirectoryError) and e.filename2 else e.filename
        return f"{target}: {why}"
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return (f"out of memory ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}): "
                "a smaller --batch-size or --max-patches needs less")
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())

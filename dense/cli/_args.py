"""Arguments and parsers shared by the commands (no model code imported here)."""

from __future__ import annotations

import argparse
from pathlib import Path

# the names of dense.segdata.READERS (kept here so that building the parser imports nothing heavy)
DATASETS = ("voc", "ade20k", "ade847", "coco-stuff", "context59", "context459", "coco")


class DenseError(Exception):
    """A user-facing error of a command: printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse, with argument errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None/False or the help text already says what the default is."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def common_parent() -> argparse.ArgumentParser:
    """Options every command accepts, wherever they are placed on the line."""
    parent = Parser(add_help=False, allow_abbrev=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    return parent


def command(sub, name: str, parent, *, help: str, description: str | None = None, func=None):
    """A subcommand parser: no abbreviations, help shown with defaults, ``--debug`` accepted."""
    p = sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                       parents=[parent], allow_abbrev=False, formatter_class=HelpFormatter)
    p.set_defaults(_parser=p)
    if func is not None:
        p.set_defaults(func=func)
    return p


def group(sub, name: str, parent, *, help: str, description: str | None = None):
    """A command with actions of its own (``dense probe train``); returns ``(parser, its subparsers)``."""
    p = command(sub, name, parent, help=help, description=description)
    p.set_defaults(func=lambda args: p.print_help() or 2)
    return p, p.add_subparsers(dest=f"{name}_action", metavar="ACTION")


def add_model(p, *, required: bool = True, default: str | None = None) -> None:
    p.add_argument("--model", required=required, default=default,
                   help="hub id (google/siglip2-so400m-patch14-384), local save_pretrained folder, or a bundled "
                        "name: 'shapes-tiny', 'shapes-tiny-v2'")


def add_runtime(p) -> None:
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="weights/activations dtype; auto = bf16 where the hardware runs it natively, else fp32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def add_max_patches(p) -> None:
    p.add_argument("--max-patches", type=int, default=None,
                   help="token budget per image (default: the checkpoint's calibrated or trained budget)")


def add_method(p, *, many: bool = False) -> None:
    if many:
        p.add_argument("--methods", default=None,
                       help="comma-separated heatmap methods of dense.heatmap.METHODS, or 'all' "
                            "(default: the checkpoint's calibrated method)")
    else:
        p.add_argument("--method", default=None,
                       help="heatmap method of dense.heatmap.METHODS (default: the checkpoint's calibrated method)")


def add_templates(p) -> None:
    p.add_argument("--templates", default=None,
                   help="'|'-separated prompt templates with one {} each, or 'none' for verbatim queries "
                        "(default: the checkpoint's calibrated templates)")


def existing(kind: str):
    """An argparse type: a path that must exist (``kind``: 'file', 'folder' or 'path')."""

    def check(text: str) -> Path:
        path = Path(text).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text}: no such {kind}")
        if kind == "folder" and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: not a folder")
        if kind == "file" and not path.is_file():
            raise argparse.ArgumentTypeError(f"{text}: not a file")
        return path

    return check


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DenseError(f"--layers takes comma-separated block indices like -1 or 8,17,-1, got {text!r}") from None


def parse_background(text: str | None):
    """None (calibrated), a float threshold, or a list of background prompts."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return [t.strip() for t in text.split(",") if t.strip()]


def parse_templates(text: str | None):
    if text is None:
        return None
    if text == "none":
        return ("{}",)
    return tuple(text.split("|"))


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DenseError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def parse_methods(text: str | None, encoder) -> list[str] | None:
    """``--methods``: None (calibrated), 'all' (every method this encoder supports), or a comma-separated list."""
    from dense.heatmap import METHODS, get_method

    if text is None:
        return None
    if text == "all":
        return list(METHODS)
    return [get_method(m.strip()).name for m in text.split(",") if m.strip()]


def load(args):
    """The encoder of ``--model`` with ``--dtype``/``--device`` where the command has them."""
    from dense.encoder import load_encoder

    kwargs = {k: getattr(args, k) for k in ("dtype", "device") if getattr(args, k, None) not in (None, "auto")}
    return load_encoder(args.model, **kwargs)


def write_json(path, obj) -> None:
    if path:
        from dense._atomic import write_json as _write

        print(f"wrote {_write(path, obj, indent=2)}")


def pct(v: float) -> str:
    """A fraction as a percentage with one decimal ('  nan' for NaN)."""
    return "  nan" if v != v else f"{100 * v:5.1f}"

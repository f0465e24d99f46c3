"""The command line's one vocabulary, and the parsers shared by the commands (no model code imported here).

Every option of every command is declared through :func:`opt`, which takes its meaning from :data:`OPTIONS`: one
flag, one meaning, in every command (a command may add what the value is for it, after a semicolon). The README's
option table is :func:`option_table`, and a test checks that both agree with the parser.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from dense.errors import InputError

# Light copies of the library's registries: building and checking the command line imports no model code (no torch).
# Each copy names its registry in REGISTRIES; tests/test_cli.py holds every copy equal to its registry.
DATASETS = ("voc", "ade20k", "ade847", "coco-stuff", "context59", "context459", "coco")
DTYPE_NAMES = ("fp32", "float32", "bf16", "bfloat16")  # float16 is refused on every device
DTYPES = ("auto", *DTYPE_NAMES)  # "auto": bf16 where the hardware runs it natively, else fp32
STORE_DTYPES = ("fp32", "float32", "bf16", "bfloat16")
CACHE = "dense-cache"  # the one default --cache of every command that reads or fills one
PRESETS = ("siglip2-tips", "pe-best-block", "dinov3", "radio")
PROTOCOLS = ("last", "last-k", "best-block", "pooled", "all")
POOLED = ("off", "on", "both")
METHODS = ("raw", "map-value", "map-value-mlp", "clear-map-value", "clear-map-value-mlp")
EXPERIMENTAL_METHODS = ("attn-value", "leave-one-out", "raw+filter", "map-value+filter", "map-value-mlp+filter",
                        "attn-value+filter", "leave-one-out+filter", "clear-map-value+filter",
                        "clear-map-value-mlp+filter")  # run when named
SCORERS = ("map-box", "heatmap-mean", "crop")
REFINES = ("none", "pamr")
SHARPEN_MODES = ("bilinear", "guided")
MIN_SYNTHETIC_IMAGES = 7  # dense demo's synthetic world: train, val and test each need an image

REGISTRIES = {  # copy -> "module:name" of the registry it copies (a dict's keys, a tuple, or a number)
    "DATASETS": "dense.segdata:READERS",
    "DTYPE_NAMES": "dense.device:_DTYPES",
    "STORE_DTYPES": "dense.eval.probe:STORE_DTYPES",
    "PRESETS": "probes.protocols:PRESETS",
    "PROTOCOLS": "probes.protocols:NAMES",
    "POOLED": "dense.eval.probe:POOLED",
    "METHODS": "dense.heatmap:METHODS",
    "EXPERIMENTAL_METHODS": "dense.heatmap:EXPERIMENTAL_METHODS",
    "SCORERS": "dense.refer:SCORERS",
    "REFINES": "dense.refine:REFINES",
    "SHARPEN_MODES": "dense.upsample:SHARPEN_MODES",
    "MIN_SYNTHETIC_IMAGES": "dense.demo:MIN_SYNTHETIC_IMAGES",
}

# flag -> its one meaning across commands
OPTIONS = {
    "--debug": "show full tracebacks on errors (any position on the line)",
    "--version": "print dense's version",
    "--model": "the encoder: a hub id (google/siglip2-so400m-patch14-384), a local save_pretrained folder, or a "
               "bundled name ('shapes-tiny', 'shapes-tiny-v2')",
    "--dtype": "weights/activations dtype: auto (bf16 where the hardware runs it natively, else fp32), fp32 or "
               "bf16 (float32, bfloat16 are the same)",
    "--device": "where the model runs: cpu, cuda (the current GPU) or cuda:N",
    "--max-patches": "token budget per image, at least 1",
    "--out": "where the command's main artifact is written, exactly at this path",
    "--json": "write the results as JSON here (atomically)",
    "--quiet": "no progress bars",
    "--batch-size": "images per extraction pass",
    "--train-batch-size": "training samples per step",
    "--seed": "seed of the command's random draws",
    "--limit": "the first N images only",
    "--images": "image folder",
    "--ann": "COCO instances JSON",
    "--refs": "referring expressions in the RefCOCO layout (JSON, or the official refs(unc).p)",
    "--dataset": f"a dataset by name (dense.segdata), read from --root: {', '.join(DATASETS)}",
    "--root": "the --dataset's root folder",
    "--split": "the split to read (the images' 'split' field for COCO files)",
    "--train-split": "the split heads are trained on",
    "--val-split": "the split the best head is chosen on",
    "--test-split": "the split scored once, at the end, with the head trained and chosen before (none: no test "
                    "report)",
    "--holdout": "choose on a seeded FRACTION of --train-split (split 'holdout') and train on the rest ('fit'), "
                 "instead of on --val-split",
    "--holdout-seed": "seed of the --holdout draw",
    "--cache": "feature cache root folder (resumable, atomic)",
    "--no-extract": "fail on features missing from the cache instead of extracting them",
    "--no-compile": "plain transformers layers, never the compiled tower (default: compiled only where `dense "
                    "compile-check` measured on this machine that it pays)",
    "--skip-bad": "report unreadable images and bad annotations and go on (default: stop at the first)",
    "--layers": "blocks whose tokens are extracted, comma-separated indices (-1 = the last)",
    "--layer-sets": "one head per layer set, ';'-separated, e.g. '-1;8,17,-1' (default: all --layers together)",
    "--lrs": "comma-separated learning rates of the sweep (one head each)",
    "--lr": "learning rate",
    "--epochs": "passes over the training images",
    "--steps": "training steps",
    "--label-scale": "training cells per patch side (1: the patch grid)",
    "--weight-decay": "AdamW weight decay of every head",
    "--feature-dtype": "dtype of training tokens held in memory: float32 or bfloat16 (fp32, bf16)",
    "--store-dtype": "dtype of the tokens in the cache: float32 or bfloat16 (fp32, bf16; bfloat16: half the disk)",
    "--protocol": "sweep a paper protocol (sets --layers and --layer-sets; see probes.protocols)",
    "--last-k": "blocks of --protocol last-k (DINOv2: 4)",
    "--preset": f"a published probe protocol ({', '.join(PRESETS)}): fixes the layers, +pooled, the token budget of "
                "its resolution, sliding-window evaluation and label handling, and prints what it fixed "
                "(probes.protocols)",
    "--pooled": "heads with the pooled MAP embedding concatenated to every token (TIPS): off, on or both",
    "--sharpen": "how predictions reach the image's pixels: bilinear, or guided (a colour guided filter with the "
                  "image as guide: sharper edges)",
    "--upsampler": "a learned upsampler of this encoder (`dense upsampler train`) in place of bilinear",
    "--probe": "a probe saved by `dense probe train --out`",
    "--method": "heatmap method of dense.heatmap.METHODS, or of EXPERIMENTAL_METHODS by name (default: the "
                "checkpoint's calibrated method)",
    "--methods": "comma-separated heatmap methods of dense.heatmap.METHODS (EXPERIMENTAL_METHODS by name), or 'all' "
                 "(every method of METHODS) (default: the checkpoint's calibrated method)",
    "--templates": "'|'-separated prompt templates with one {} each, or 'none' for verbatim queries (default: the "
                   "checkpoint's calibrated templates)",
    "--background": "a probability threshold in [0, 1] (0: every pixel gets a class), or comma-separated background "
                    "prompts (default: the checkpoint's calibrated threshold)",
    "--box-threshold": "relative heatmap threshold in [0, 1] for the box without candidates (default: the "
                       "checkpoint's calibrated one)",
    "--sweep": "comma-separated values of the command's threshold to score as well, to choose one with --choose",
    "--choose": "choose the best setting on this split, print it and keep it in the JSON (choose on val, report "
                "test)",
    "--guard": "with --choose: the best mIoU among settings whose pixel accuracy is within GUARD (a fraction) of "
               "the best",
    "--calibration-out": "with --choose: write the choice into this dense_calibration.json (its other keys are "
                         "kept)",
    "--refine": "comma-separated refinements to score each method with: none, pamr (dense.refine) (default: the "
                "checkpoint's calibrated one)",
    "--windows": "sliding windows: n x n overlapping crops, each at the token budget, scores averaged (default: the "
                 "checkpoint's calibrated count)",
    "--resamples": "bootstrap draws for the 95%% intervals",
    "--scorers": f"comma-separated candidate scorers of dense.refer.SCORERS: {', '.join(SCORERS)}",
    "--threads": "CPU threads of torch and of BLAS (threadpoolctl), and the cap of decode workers (default: "
                 "OMP_NUM_THREADS when set, else the cores other processes leave free, at least 1: "
                 "dense.device.default_threads)",
    "--queries": "text queries, e.g. 'a dog' 'a red car'",
    "--n-images": "synthetic images to draw (at least 7: train, val and test each need one)",
    "--max-images": "images (or photos) shown on the page",
    "--host": "address the local page listens on; anything but a loopback address shows the images to your network",
    "--port": "port the local page listens on; 0 picks a free one",
}


class Parser(argparse.ArgumentParser):
    """argparse, with argument errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None/False/empty or the help text already says what the default is."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def opt(p, flag: str, detail: str | None = None, *, needs: str | None = None, **kwargs):
    """``p.add_argument(flag, ...)`` with the flag's one meaning from :data:`OPTIONS` as its help (``detail``: what it
    is for this command, after a semicolon). ``needs``: another flag of the command without which this one is a
    malformed command line (exit 2, checked by :func:`check` before any work)."""
    meaning = OPTIONS[flag]
    if needs is not None:
        detail = f"needs {needs}" if detail is None else f"{detail} (needs {needs})"
        p.set_defaults(_needs=(*(p.get_default("_needs") or ()), (flag, needs)))
    if flag in PATH_TYPES and "type" not in kwargs and kwargs.get("action") is None:
        kwargs["type"] = PATH_TYPES[flag]  # one check of what a path flag writes, in every command
    kwargs["help"] = meaning if detail is None else f"{meaning}; {detail}"
    return p.add_argument(flag, **kwargs)


def check(args) -> None:
    """The checks of a parsed command line that no single flag's type can make (a flag given without the flag it
    needs): ``args._parser.error`` (exit 2) on the first that fails, before any model code is imported."""
    for flag, need in getattr(args, "_needs", ()):
        if _given(args, flag) and not _given(args, need):
            args._parser.error(f"{flag} needs {need}")


def check_layers(args) -> None:
    """``--layers`` / ``--layer-sets`` against the depth of ``--model``'s tower, read from its config.json before the
    model is built (exit 2 on an index past the depth). A model that cannot be resolved is left to the loading, which
    names it."""
    given = {"--layers": tuple(getattr(args, "layers", None) or ()),
             "--layer-sets": tuple(b for s in getattr(args, "layer_sets", None) or () for b in s)}
    if not any(given.values()) or not getattr(args, "model", None):
        return
    from dense.checkpoint import read_json, resolve_checkpoint
    from dense.errors import DenseError
    from dense.features import block_indices

    try:
        config = read_json(resolve_checkpoint(args.model), "config.json")
    except (DenseError, OSError, ValueError):
        return
    depth = config.get("vision_config", config).get("num_hidden_layers")
    for flag, blocks in given.items():
        try:
            block_indices(blocks, depth)  # the one rule of block indices
        except DenseError as e:
            args._parser.error(f"{flag}: {args.model}: {e}")


def _given(args, flag: str) -> bool:
    return getattr(args, flag.lstrip("-").replace("-", "_"), None) not in (None, False, [], ())


def common_parent() -> argparse.ArgumentParser:
    """Options every command accepts, wherever they are placed on the line."""
    parent = Parser(add_help=False, allow_abbrev=False)
    opt(parent, "--debug", action="store_true", default=argparse.SUPPRESS)
    opt(parent, "--threads", type=positive_int, default=None)
    return parent


def plain(text: str) -> str:
    """Docstring markup -> what a terminal shows: ``` ``x`` ``` and ``:mod:`x``` become ``x``."""
    return re.sub(r"``([^`]+)``", r"\1", re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text))


def command(sub, name: str, parent, *, help: str, description: str | None = None, func=None):
    """A subcommand parser: no abbreviations, help shown with defaults, ``--debug`` accepted; its texts plain (a
    module docstring read as a description shows no markup)."""
    help, description = plain(help), plain(description) if description else None
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


# ---------------------------------------------------------------------------------------------------------------------
# argparse types: bad values are refused while parsing, before any work


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def open_fraction(text: str) -> float:
    """A number in (0, 1)."""
    v = fraction(text)
    if v in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return v


def query(text: str) -> str:
    """A text query: not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a query is empty; give some text, e.g. 'a dog'")
    return text


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


# The formats a figure's --out may name by its extension: matplotlib writes each (tests/test_cli.py checks them
# against the Agg canvas's own list); the parser refuses any other before the model loads.
FIGURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "tif", "tiff", "webp", "eps", "ps")


def figure_format(path) -> str:
    """The format a figure path names by its extension (``fig.pdf`` -> ``"pdf"``; no extension: ``"png"``, as
    matplotlib's ``savefig``); raises naming the path when its extension is none of :data:`FIGURE_FORMATS`."""
    ext = Path(path).suffix.lower().lstrip(".") or "png"
    if ext not in FIGURE_FORMATS:
        raise InputError(f"{path}: a figure's extension names its format; use one of "
                         f"{', '.join('.' + f for f in FIGURE_FORMATS)}")
    return ext


def _writable(path: Path, text: str, kind: str) -> None:
    """A path a command will write (``kind``: 'file' or 'folder'): no folder where a file goes, no file where a
    folder goes, and no file among its parents; checked before any computation."""
    if kind == "file" and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file; give a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            break


def out_file(text: str) -> Path:
    """An argparse type: a file the command writes (see :func:`_writable`)."""
    path = Path(text).expanduser()
    _writable(path, text, "file")
    return path


def out_folder(text: str) -> Path:
    """An argparse type: a folder the command writes into, created when missing (see :func:`_writable`)."""
    path = Path(text).expanduser()
    _writable(path, text, "folder")
    return path


def tensors_file(text: str) -> Path:
    """An argparse type: a dense ``.safetensors`` file the command writes (a probe, a head, an upsampler): the name
    says the format, so ``head.pt`` (torch's pickle format) is refused."""
    path = out_file(text)
    if path.suffix.lower() != ".safetensors":
        raise argparse.ArgumentTypeError(f"{text}: dense writes this as safetensors; name it *.safetensors")
    return path


def figure_file(text: str) -> Path:
    """An argparse type: a figure the command writes, its format named by its extension (:func:`figure_format`)."""
    path = out_file(text)
    try:
        figure_format(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


PATH_TYPES = {"--json": out_file, "--cache": out_folder}  # flags that always name a file / folder to write


def background(text: str):
    """``--background``: a probability threshold in [0, 1], or a list of background prompts."""
    try:
        v = float(text)
    except ValueError:
        prompts = [t.strip() for t in text.split(",") if t.strip()]
        if not prompts:
            raise argparse.ArgumentTypeError("expected a threshold in [0, 1] or background prompts, got "
                                             f"{text!r}") from None
        return prompts
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"a threshold must be in [0, 1], got {text}")
    return v


def cache_root(text: str) -> Path:
    """An argparse type: a feature cache root, a folder or a path where one can be made (not a file)."""
    from dense.eval.data import check_cache_root

    try:
        return check_cache_root(Path(text).expanduser())
    except NotADirectoryError as e:
        raise argparse.ArgumentTypeError(f"{e.filename}: {e.strerror}") from None


def floats(text: str) -> list[float]:
    """Comma-separated numbers."""
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def at_least(n: int, most: int | None = None):
    """An argparse type: a whole number, at least ``n`` (and at most ``most``)."""

    def check(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < n or (most is not None and v > most):
            raise argparse.ArgumentTypeError(f"must be at least {n}, got {v}" if most is None else
                                             f"must be {n}..{most}, got {v}")
        return v

    return check


def one_of(registry: tuple[str, ...], what: str, *, many: bool = False, all_: bool = False):
    """An argparse type: a name of ``registry`` (``many``: comma-separated names; ``all_``: or 'all', kept as
    ``["all"]``). An unknown name is refused while parsing, listing the names there are."""

    def check(text: str):
        got = names(text) if many else [text.strip()]
        if all_ and got == ["all"]:
            return got
        bad = [g for g in got if g not in registry]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, bad))}; choose from "
                                             f"{', '.join(registry)}{', or all' if all_ else ''}")
        return got if many else got[0]

    return check


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has that GPU is checked when the model loads)."""
    kind, sep, index = text.partition(":")
    if text == "cpu" or (kind == "cuda" and (not sep or index.isdigit())):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")


def fractions(text: str) -> list[float]:
    """Comma-separated numbers, each in [0, 1] (thresholds)."""
    out = floats(text)
    bad = [v for v in out if not 0.0 <= v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"each must be in [0, 1], got {bad[0]:g}")
    return out


def positive_floats(text: str) -> list[float]:
    """Comma-separated numbers, each above 0 (learning rates)."""
    out = floats(text)
    bad = [v for v in out if not v > 0]
    if bad:
        raise argparse.ArgumentTypeError(f"each must be above 0, got {bad[0]:g}")
    return out


def positive_float(text: str) -> float:
    """One number above 0."""
    v = _one_number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {v:g}")
    return v


def non_negative_float(text: str) -> float:
    """One number, at least 0."""
    v = _one_number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {v:g}")
    return v


def _one_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices like -1 or 8,17,-1, got "
                                         f"{text!r}") from None


def layer_sets(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(layers(s) for s in text.split(";"))


def names(text: str) -> list[str]:
    """Comma-separated names."""
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out:
        raise argparse.ArgumentTypeError("expected at least one name")
    return out


def templates(text: str) -> tuple[str, ...]:
    """``'|'``-separated templates, each with exactly one ``{}`` (the rule of ``dense.text``), or ``none``."""
    if text == "none":
        return ("{}",)
    out = tuple(text.split("|"))
    bad = [t for t in out if t.count("{}") != 1]
    if bad:
        raise argparse.ArgumentTypeError(f"template {bad[0]!r} must contain exactly one '{{}}' (where the query goes), "
                                         f"e.g. 'a photo of {{}}.'")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Options several commands share


def add_model(p, *, required: bool = True, default: str | None = None) -> None:
    opt(p, "--model", required=required, default=default)


def add_runtime(p) -> None:
    opt(p, "--dtype", default="auto", choices=DTYPES)
    opt(p, "--device", default="cpu", type=device)


def add_max_patches(p, detail: str = "default: the checkpoint's calibrated or trained budget") -> None:
    opt(p, "--max-patches", detail, type=positive_int, default=None)


def add_method(p, *, many: bool = False) -> None:
    if many:
        opt(p, "--methods", default=None, type=one_of((*METHODS, *EXPERIMENTAL_METHODS), "heatmap method", many=True,
                                                      all_=True))
    else:
        opt(p, "--method", default=None, type=one_of((*METHODS, *EXPERIMENTAL_METHODS), "heatmap method"))


def add_templates(p) -> None:
    opt(p, "--templates", default=None, type=templates)


def add_quiet(p) -> None:
    opt(p, "--quiet", action="store_true")


def add_json(p, detail: str | None = None) -> None:
    opt(p, "--json", detail, default=None)


def add_dataset(p, *, required: bool = False) -> None:
    opt(p, "--dataset", required=required, choices=DATASETS, metavar="NAME", needs="--root")
    opt(p, "--root", required=required, type=existing("folder"), needs="--dataset")


# ---------------------------------------------------------------------------------------------------------------------
# Running: the encoder, files, printing


def load(args):
    """The encoder of ``--model`` with ``--dtype``/``--device`` where the command has them."""
    from dense.encoder import load_encoder

    return load_encoder(args.model, **runtime(args))


def runtime(args) -> dict:
    """``{"dtype": ..., "device": ...}`` of the flags a command has (``auto`` left to the encoder)."""
    return {k: getattr(args, k) for k in ("dtype", "device") if getattr(args, k, None) not in (None, "auto")}


def write_json(path, obj) -> Path | None:
    """``obj`` as JSON at ``path``, atomically (nothing when ``path`` is None); the path written. Prints nothing: see
    :func:`finish`."""
    if not path:
        return None
    from dense._atomic import write_json as _write

    return _write(path, obj, indent=2)


def save_figure(fig, path) -> Path:
    """The figure at exactly ``path``, atomically, in the format its extension names (:data:`FIGURE_FORMATS`; the
    parser checked it with :func:`figure_file`). Prints nothing: see :func:`finish`."""
    from dense._atomic import atomic_path

    fmt = figure_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=fmt)
    return Path(path)


def finish(show, *writes) -> int:
    """Write then print, every command's last step: each of ``writes`` (a function that writes one file atomically
    and returns its path, or None when there is nothing to write) runs first; then ``show`` (text, or a function that
    prints) and one ``wrote PATH`` line per file. So a closed stdout (``dense ... | head -1``) never costs a file, and
    what is printed is what was written. Returns 0, the command's exit status."""
    written = [path for write in writes if (path := write()) is not None]
    if callable(show):
        show()
    elif show:
        print(show)
    for path in written:
        print(f"wrote {path}")
    return 0


_COMMAND_LINE: list[str] = []


def set_command_line(argv: list[str]) -> None:
    _COMMAND_LINE[:] = argv


def command_line() -> str:
    """The command being run, as typed (recorded where a file says which command measured it)."""
    return shlex.join(["dense", *(_COMMAND_LINE or sys.argv[1:])])


def pct(v: float) -> str:
    """A fraction as a percentage with one decimal ('  nan' for NaN)."""
    return "  nan" if v != v else f"{100 * v:5.1f}"


def plural(n: int, word: str) -> str:
    """``1 query``, ``2 queries``, ``4 classes``, ``3 images``, ``2 heads``: the one way the CLI counts things."""
    if n == 1:
        return f"1 {word}"
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return f"{n} {word[:-1]}ies"
    return f"{n} {word}es" if word.endswith(("s", "x", "z", "ch", "sh")) else f"{n} {word}s"


# ---------------------------------------------------------------------------------------------------------------------
# The README's option table


def walk(parser, prefix: str = ""):
    """``(command path, parser)`` for every command and action under ``parser`` (the top level as "dense")."""
    yield prefix or "dense", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{prefix} {name}".strip())


def flags_by_command(parser) -> dict[str, dict[str, str]]:
    """``{command: {flag: help}}`` of every option (``-h/--help`` left out)."""
    out = {}
    for cmd, p in walk(parser):
        out[cmd] = {s: a.help for a in p._actions for s in a.option_strings
                    if s.startswith("--") and s != "--help"}
    return out


def option_table(parser) -> str:
    """Markdown: one row per flag, its meaning, and the commands that take it."""
    used: dict[str, list[str]] = {}
    for cmd, flags in flags_by_command(parser).items():
        for flag in flags:
            used.setdefault(flag, []).append(cmd)
    rows = ["| flag | meaning | commands |", "| --- | --- | --- |"]
    for flag in sorted(used):
        everywhere = flag == "--debug" or flag in {s for a in common_parent()._actions for s in a.option_strings}
        cmds = "all" if everywhere else ", ".join(f"`{c}`" for c in used[flag])
        rows.append(f"| `{flag}` | {OPTIONS[flag].replace('%%', '%').replace('|', chr(92) + '|')} | {cmds} |")
    return "\n".join(rows)

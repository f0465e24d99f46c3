"""dense's errors and what the command line makes of them: a malformed command line exits 2 before any model code is
imported; dense's own errors (and the system's about a file) are one line, exit 1; a bug keeps its traceback. Also
the package's names: every module is `dense.<name>`, every registry the parser copies equals its registry."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dense
import dense.errors as errors
from dense.cli import main, one_line
from dense.cli._args import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# A malformed command line: exit 2, one line naming the flag, before any model code


def _world(tmp: Path) -> dict[str, str]:
    """Files the parser checks exist (an image, an annotation file, refs, a folder); nothing in them is read."""
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "im.png").write_bytes(b"never read")
    (tmp / "ann.json").write_text("{}")
    (tmp / "refs.json").write_text("[]")
    return {"IMG": str(tmp / "im.png"), "ANN": str(tmp / "ann.json"), "REFS": str(tmp / "refs.json"),
            "DIR": str(tmp / "images"), "OUT": str(tmp / "out")}


NO_MODEL = "/nonexistent/model"  # loading it would fail with exit 1: an exit 2 says the parser spoke first
OV = ["eval", "openvocab", "--ann", "ANN", "--images", "DIR"]
REFER = ["eval", "refer", "--ann", "ANN", "--refs", "REFS", "--images", "DIR"]
MALFORMED = [
    (["heatmap", "IMG", "a dog", "--method", "nosuch"], "--method: unknown heatmap method 'nosuch'; choose from raw,"),
    (["localize", "IMG", "a dog", "--method", "map-value+nosuch"], "unknown heatmap method 'map-value+nosuch'"),
    ([*OV, "--methods", "map-value,nosuch"], "--methods: unknown heatmap method 'nosuch'"),
    ([*REFER, "--methods", "nosuch"], "--methods: unknown heatmap method 'nosuch'"),
    ([*REFER, "--scorers", "map-box,nosuch"], "--scorers: unknown candidate scorer 'nosuch'; choose from map-box,"),
    ([*OV, "--refine", "none,crf"], "--refine: unknown refinement 'crf'; choose from none, pamr"),
    (["heatmap", "IMG", "a dog", "--device", "tpu"], "--device: 'tpu' is not a device: use cpu, cuda or cuda:N"),
    (["segment", "IMG", "a dog", "--device", "cuda:x"], "--device: 'cuda:x' is not a device"),
    (["heatmap", "IMG", "a dog", "--templates", "a photo of"],
     "--templates: template 'a photo of' must contain exactly one '{}'"),
    ([*OV, "--templates", "a {}|{} and {}"], "--templates: template '{} and {}' must contain exactly one '{}'"),
    (["extract", "--images", "DIR", "--cache", "OUT", "--layers", "5x"], "--layers: expected comma-separated block"),
    (["demo", "--n-images", "3"], "--n-images: must be at least 7, got 3"),
    ([*OV, "--calibration-out", "OUT"], "--calibration-out needs --choose"),
    ([*REFER, "--calibration-out", "OUT"], "--calibration-out needs --choose"),
    (["demo", "--images", "DIR"], "--images needs --queries"),
    (["demo", "--queries", "a dog"], "--queries needs --images"),
    (["eval", "openvocab", "--dataset", "voc"], "--dataset needs --root"),
    (["probe", "train", "--root", "DIR", "--cache", "OUT"], "--root needs --dataset"),
    (["explore", "--images", "DIR", "--port", "70000"], "--port: must be 0..65535, got 70000"),
    ([*OV, "--sweep", "0.3,1.5"], "--sweep: each must be in [0, 1], got 1.5"),
    ([*REFER, "--sweep", "-0.1"], "--sweep: each must be in [0, 1], got -0.1"),
    (["probe", "train", "--ann", "ANN", "--images", "DIR", "--cache", "OUT", "--lrs", "1e-3,0"],
     "--lrs: each must be above 0, got 0"),
    (["probe", "train", "--ann", "ANN", "--images", "DIR", "--cache", "OUT", "--weight-decay", "-1"],
     "--weight-decay: must be at least 0, got -1"),
    (["probe", "refer", "--ann", "ANN", "--refs", "REFS", "--images", "DIR", "--lr", "0"], "--lr: must be above 0"),
]


@pytest.mark.parametrize("argv, message", MALFORMED, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in MALFORMED])
def test_a_malformed_command_line_exits_2_naming_the_flag(argv, message, tmp_path, capsys):
    paths = _world(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([paths.get(a, a) for a in argv] + ["--model", NO_MODEL])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dense {argv[0]}") and message in lines[0], lines
    assert "n_images" not in lines[0] and not (tmp_path / "out").exists()


def test_the_parser_imports_no_model_code_to_refuse_them(tmp_path):
    """Every case above in one fresh process: each exits 2, and neither torch nor transformers was imported."""
    paths = _world(tmp_path)
    cases = [[paths.get(a, a) for a in argv] + ["--model", NO_MODEL] for argv, _ in MALFORMED]
    code = """
import json, sys
from dense.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"codes": [2] * len(cases), "heavy": []}, out.stderr


def test_a_block_past_the_models_depth_exits_2_before_the_model_is_built(tmp_path):
    """--layers / --layer-sets against the depth in the checkpoint's config.json (shapes-tiny has 2 blocks)."""
    paths = _world(tmp_path)
    code = """
import sys
from dense.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "built" if "transformers.models.siglip.modeling_siglip" in sys.modules else "not built")
"""
    for flags, flag in ((["--layers", "0,5"], "--layers"), (["--layers", "-1", "--layer-sets=-1;-3"], "--layer-sets")):
        argv = ["probe", "train", "--ann", paths["ANN"], "--images", paths["DIR"], "--cache", paths["OUT"],
                "--model", "shapes-tiny", *flags]
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
        assert out.stdout.split() == ["exit", "2", "not", "built"], out.stderr
        assert f"{flag}: shapes-tiny: layers [" in out.stderr and "out of range for 2 blocks" in out.stderr
    assert not Path(paths["OUT"]).exists()


# ---------------------------------------------------------------------------------------------------------------------
# dense's errors: one line, exit 1; a bug: its traceback


KINDS = {"InputError": ValueError, "ImageError": ValueError, "AnnotationError": ValueError, "FormatError": ValueError,
         "MismatchError": ValueError, "DeviceError": ValueError, "CheckpointError": OSError,
         "LayoutError": FileNotFoundError, "MissingEntryError": KeyError, "CacheWriteError": OSError,
         "RankFailed": RuntimeError}


def test_every_error_is_a_dense_error_and_the_builtin_it_always_was():
    assert set(errors.__all__) == {"DenseError", *KINDS}
    for name, builtin in KINDS.items():
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DenseError) and issubclass(cls, builtin), name
    # one home: the modules that raise them hold no error classes of their own
    import probes

    modules = [*pkgutil.walk_packages(dense.__path__, "dense."), *pkgutil.walk_packages(probes.__path__, "probes.")]
    defined = {name for m in modules if m.name not in ("dense.errors", "dense.cli.__main__")
               for name, v in vars(importlib.import_module(m.name)).items()
               if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == m.name}
    assert defined <= {"RequestError"}, defined  # the explorer's HTTP refusal (a status code with its line)


def test_one_line_reads_each_kind_as_a_user_should():
    assert one_line(errors.MissingEntryError("c/1.st: not in the cache")) == "c/1.st: not in the cache"  # not quoted
    assert one_line(errors.LayoutError("/data/voc", "no label files")) == "/data/voc: no label files"
    assert one_line(errors.CheckpointError("m: folder has no config.json")) == "m: folder has no config.json"
    assert one_line(IsADirectoryError(21, "Is a directory", "/tmp/x")) == "/tmp/x: is a directory"
    assert one_line(FileNotFoundError(2, "upsampler file: no such file", "u.st")) == "u.st: upsampler file: no such " \
        "file"  # dense's own words kept
    assert one_line(errors.InputError("first line\nsecond")) == "first line"


def _fail_with(monkeypatch, exc):
    """`dense heatmap` whose command function raises ``exc`` (the parser is built anew by each main call)."""
    import dense.cli.query as query

    def run(args):
        raise exc

    monkeypatch.setattr(query, "run_heatmap", run)


@pytest.mark.parametrize("exc, line", [
    (errors.ImageError("im.png: not an image"), "dense: error: im.png: not an image"),
    (errors.MismatchError("referring head trained on another encoder"),
     "dense: error: referring head trained on another encoder"),
    (errors.MissingEntryError("c/1.safetensors: not in the cache"), "dense: error: c/1.safetensors: not in the cache"),
    (NotADirectoryError(20, "Not a directory", "cache/x"), "dense: error: cache/x: not a directory"),
])
def test_dense_errors_and_file_errors_are_one_line_exit_1(exc, line, tmp_path, monkeypatch, capsys):
    _fail_with(monkeypatch, exc)
    (tmp_path / "im.png").write_bytes(b"x")
    assert main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [line]
    with pytest.raises(type(exc)):  # --debug: the traceback
        main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m", "--debug"])


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), AttributeError("no attribute 'tokens'"),
                                 IndexError("list index out of range"), KeyError("grid"), ValueError("broadcast")])
def test_a_bug_keeps_its_traceback(exc, tmp_path, monkeypatch, capsys):
    _fail_with(monkeypatch, exc)
    (tmp_path / "im.png").write_bytes(b"x")
    with pytest.raises(type(exc)):
        main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m"])
    assert "dense: error" not in capsys.readouterr().err


def test_a_real_bad_input_through_the_library_is_one_line(tmp_path, capsys):
    """Not a stand-in: a checkpoint folder without config.json, refused by dense.checkpoint."""
    from conftest import random_rgb
    from PIL import Image

    (tmp_path / "ckpt").mkdir()
    Image.fromarray(random_rgb(20, 30)).save(tmp_path / "im.png")
    assert main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", str(tmp_path / "ckpt")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dense: error: {tmp_path / 'ckpt'}: folder has no config.json; expected a save_pretrained() checkpoint"]


# ---------------------------------------------------------------------------------------------------------------------
# Names: every module is dense.<name>; the public names are callable as the README writes them


def test_every_module_of_the_package_is_an_attribute_of_dense():
    names = {p.stem for p in (ROOT / "dense").glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in (ROOT / "dense").glob("*/__init__.py")}
    assert names >= {"extract", "errors", "refer", "eval", "cli"}
    code = f"import dense; print(sorted(n for n in {sorted(names)!r} if getattr(dense, n).__name__ != 'dense.' + n))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr
    assert not set(dense.__all__) & names, "a public name that is also a module is rebound when the module is imported"


def test_the_public_names_are_what_the_readme_lists():
    assert dense.__all__ == ["load_encoder", "random_encoder", "FeatureMap", "classify", "segment", "localize",
                             "Localizer"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "The public API has seven names: " + ", ".join(f"`{n}`" for n in dense.__all__[:-1]) + " and `Localizer`" \
        in readme
    refer = importlib.import_module("dense.refer")  # importing the module leaves the function in place
    assert callable(dense.localize) and dense.localize is refer.localize


def test_import_dense_and_building_the_parser_import_no_torch():
    code = ("import sys, dense, dense.errors; from dense.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Registries: the parser's light copies equal the library's registries


@pytest.mark.parametrize("copy", sorted(REGISTRIES))
def test_every_registry_copy_equals_its_registry(copy):
    import dense.cli._args as args

    module, name = REGISTRIES[copy].split(":")
    registry = getattr(importlib.import_module(module), name)
    if copy == "DTYPE_NAMES":  # the spellings dense.device knows, less float16, which it refuses on every device
        import torch

        registry = [k for k, v in registry.items() if v != torch.float16]
    mine = getattr(args, copy)
    assert (mine == registry) if isinstance(registry, int) else (tuple(mine) == tuple(registry)), \
        f"dense.cli._args.{copy} is not {REGISTRIES[copy]}: update the copy"


def test_every_registry_the_parser_checks_has_its_copy_tied():
    """No light list in the parser that REGISTRIES does not name (a new copy must say what it copies)."""
    import dense.cli._args as args

    tuples = {k for k, v in vars(args).items() if k.isupper() and isinstance(v, tuple)}
    # DTYPES: "auto" + DTYPE_NAMES; FIGURE_FORMATS: a subset of matplotlib's (tests/test_cli_outputs.py ties it)
    assert tuples - set(REGISTRIES) == {"DTYPES", "FIGURE_FORMATS"}
    assert args.DTYPES == ("auto", *args.DTYPE_NAMES)


def test_dense_raises_its_own_kinds_not_bare_value_or_key_errors():
    """A bare ValueError/KeyError from dense's code would read as a bug (a traceback) at the command line: raise
    an InputError / MissingEntryError (still a ValueError / KeyError) instead."""
    import ast

    bare = []
    for path in sorted([*(ROOT / "dense").rglob("*.py"), *(ROOT / "probes").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", None) in ("ValueError", "KeyError"):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, bare


# ---------------------------------------------------------------------------------------------------------------------
# Words a user reads


def test_plural_counts_every_word_the_cli_counts():
    from dense.cli._args import plural

    got = [plural(n, w) for n, w in ((1, "class"), (4, "class"), (1, "head"), (2, "head"), (2, "query"),
                                     (3, "key"), (2, "box"), (2, "match"), (5, "unreadable image"), (0, "image"))]
    assert got == ["1 class", "4 classes", "1 head", "2 heads", "2 queries", "3 keys", "2 boxes", "2 matches",
                   "5 unreadable images", "0 images"]


def test_help_texts_show_no_docstring_markup():
    from dense.cli import build_parser
    from dense.cli._args import walk

    for cmd, p in walk(build_parser()):
        text = p.format_help()
        assert "``" not in text and ":mod:`" not in text and ":func:`" not in text and ":class:`" not in text, cmd


# ---------------------------------------------------------------------------------------------------------------------
# Inputs refused once, where the rule lives


@pytest.mark.parametrize("budget", [2.5, 4.0, True, "64", 0, -3])
def test_a_token_budget_is_a_whole_number_at_least_1(budget, tiny_encoder):
    from conftest import random_rgb

    rgb = random_rgb(20, 30)
    with pytest.raises(errors.InputError, match="max_patches"):
        tiny_encoder.extract(rgb, max_patches=budget)
    with pytest.raises(errors.InputError, match="max_patches"):
        next(tiny_encoder.extract_many([rgb], max_patches=budget, progress=False))
    six = tiny_encoder.extract(rgb, max_patches=6).grid_hw
    assert tiny_encoder.extract(rgb, max_patches=np.int64(6)).grid_hw == six and six[0] * six[1] <= 6


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_queries_are_never_empty_on_any_path(query, tiny_encoder):
    from conftest import random_rgb

    from dense.heatmap import patch_scores
    from dense.text import embed_texts

    fmap = tiny_encoder.extract(random_rgb(20, 30))
    with pytest.raises(errors.InputError, match=r"^expression is empty: give some text$"):
        dense.Localizer(tiny_encoder, fmap).localize(query)
    with pytest.raises(errors.InputError, match=r"^expression is empty"):
        dense.localize(tiny_encoder, fmap, query)
    with pytest.raises(errors.InputError, match=r"\[1\] is an empty query"):
        patch_scores(tiny_encoder, fmap, ["red circle", query])
    with pytest.raises(errors.InputError, match=r"\[0\] is an empty query"):
        embed_texts(tiny_encoder, [query])
    with pytest.raises(errors.InputError, match=r"^class_names\[1\] is an empty query"):
        dense.segment(tiny_encoder, fmap, ["red circle", query])


def test_the_parsers_query_check_is_the_librarys_rule():
    import argparse

    from dense.cli._args import query
    from dense.text import check_queries

    for text in ["", " ", "\t", "a dog", " x ", "..."]:
        try:
            check_queries(text)
            library = True
        except errors.InputError:
            library = False
        try:
            query(text)
            parser = True
        except argparse.ArgumentTypeError:
            parser = False
        assert library == parser, text


@pytest.mark.parametrize("command", ["heatmap", "segment", "localize"])
def test_a_file_that_is_not_an_image_fails_before_the_model_is_loaded(command, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert main([command, str(tmp_path / "notes.png"), "a dog", "--model", NO_MODEL]) == 1  # NO_MODEL: never read
    line = capsys.readouterr().err.strip()
    assert line.startswith("dense: error: ") and "notes.png" in line and NO_MODEL not in line, line


@pytest.mark.parametrize("damaged, named", [
    ("model.safetensors", "model.safetensors: a damaged or incomplete weights file (Error while deserializing header"),
    ("preprocessor_config.json", "preprocessor_config.json: not valid JSON"),
    ("dense_calibration.json", "dense_calibration.json: not valid JSON"),
    ("tokenizer.json", ": its tokenizer cannot be loaded"),
])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(damaged, named, tiny_siglip_dir, tmp_path, capsys):
    import shutil

    from conftest import random_rgb
    from PIL import Image

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_siglip_dir, ckpt)
    path = ckpt / damaged
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:] if damaged.endswith(".safetensors") else b'{"cut": ')
    Image.fromarray(random_rgb(20, 30)).save(tmp_path / "im.png")
    assert main(["heatmap", str(tmp_path / "im.png"), "red circle", "--model", str(ckpt),
                 "--out", str(tmp_path / "h.png")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dense: error: {ckpt}") and named in lines[0], lines
    assert not (tmp_path / "h.png").exists()


def test_a_closed_stdout_is_exit_1_without_a_message(tmp_path, monkeypatch, capsys):
    _fail_with(monkeypatch, BrokenPipeError(32, "Broken pipe"))
    (tmp_path / "im.png").write_bytes(b"x")
    assert main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m"]) == 1
    assert capsys.readouterr().err == ""


def test_out_of_memory_is_one_line_with_what_to_lower(tmp_path, monkeypatch, capsys):
    import torch

    (tmp_path / "im.png").write_bytes(b"x")
    for exc in (MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        _fail_with(monkeypatch, exc)
        assert main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m"]) == 1
        line = capsys.readouterr().err.strip()
        assert line.startswith("dense: error: out of memory (") and "--max-patches" in line, line
    _fail_with(monkeypatch, RuntimeError("shape mismatch"))  # any other RuntimeError is a bug
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["heatmap", str(tmp_path / "im.png"), "a dog", "--model", "m"])


def test_damaged_json_files_of_dense_name_themselves(tmp_path):
    """A calibration file to update and a cache's spec.json: one DenseError naming the file, not json's traceback."""
    from dense.cache import FeatureCache
    from dense.eval import update_calibration

    cal = tmp_path / "dense_calibration.json"
    cal.write_text('{"method": ')
    with pytest.raises(errors.CheckpointError, match=r"dense_calibration\.json: not valid JSON"):
        update_calibration(cal, {"background": 0.4})
    assert cal.read_text() == '{"method": '  # nothing written
    cache = FeatureCache(tmp_path / "cache", {"fingerprint": "x"})
    cache.dir.mkdir(parents=True)
    (cache.dir / "spec.json").write_text("{")
    with pytest.raises(errors.FormatError, match=r"spec\.json: not valid JSON"):
        cache.init()


def test_an_empty_folder_is_one_message_in_every_command(tmp_path, capsys):
    from dense.preprocess import no_images_error

    (tmp_path / "empty").mkdir()
    folder = str(tmp_path / "empty")
    want = f"dense: error: {no_images_error(folder)}"
    for argv in (["extract", "--images", folder, "--cache", str(tmp_path / "c")],
                 ["upsampler", "train", "--images", folder, "--out", str(tmp_path / "u.safetensors")]):
        assert main([*argv, "--model", NO_MODEL]) == 1  # before the model: NO_MODEL is never read
        assert capsys.readouterr().err.strip() == want, argv
    assert "no images found (looked for .jpg, .jpeg, .png" in want

"""What a command writes: files before anything is printed (a closed stdout loses none), figures in the format their
extension names, and paths that cannot be written refused by the parser before any computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import random_rgb
from PIL import Image

from dense.cli import main, one_line
from dense.cli._args import FIGURE_FORMATS, figure_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "im.png"
    Image.fromarray(random_rgb(40, 60, seed=9)).save(path)
    return path


def test_files_survive_a_closed_stdout(tiny_siglip_dir, image, tmp_path):
    """`dense localize ... --json l.json | head -0`: the reader is gone before the first line; both files are still
    written, and the command ends without a traceback or a 'Broken pipe' error line."""
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "dense.cli", "localize", str(image), "the red circle",
                               "--model", str(tiny_siglip_dir), "--out", str(tmp_path / "l.png"), "--json",
                               str(tmp_path / "l.json")], stdout=write, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=300)
    finally:
        os.close(write)
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "l.json").read_text())["expressions"][0]["expression"] == "the red circle"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_files_are_written_before_anything_is_printed(tiny_siglip_dir, image, tmp_path, capsys, monkeypatch):
    """Whatever a command prints, its files exist already: every print is checked against the disk."""
    import builtins

    seen = []
    real_print = builtins.print

    def checking_print(*args, **kwargs):
        seen.append(((tmp_path / "h.png").exists(), (tmp_path / "h.json").exists()))
        real_print(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", checking_print)
    assert main(["heatmap", str(image), "red circle", "--model", str(tiny_siglip_dir), "--out",
                 str(tmp_path / "h.png"), "--json", str(tmp_path / "h.json")]) == 0
    assert seen and all(png and js for png, js in seen), seen
    out = capsys.readouterr().out
    assert out.index("peak %") < out.index(f"wrote {tmp_path / 'h.png'}") < out.index(f"wrote {tmp_path / 'h.json'}")


@pytest.mark.parametrize(("name", "magic"), [("fig.pdf", b"%PDF"), ("fig.jpg", b"\xff\xd8\xff"),
                                             ("fig.svg", b"<?xml"), ("fig.png", b"\x89PNG"), ("fig", b"\x89PNG")])
def test_a_figure_is_written_in_the_format_its_extension_names(tiny_siglip_dir, image, tmp_path, name, magic):
    assert main(["segment", str(image), "red circle", "--model", str(tiny_siglip_dir), "--out",
                 str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic


def test_figure_formats_are_formats_matplotlib_writes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert set(FIGURE_FORMATS) <= set(FigureCanvasAgg(Figure()).get_supported_filetypes())
    assert figure_format("a/b.PDF") == "pdf" and figure_format("plot") == "png"
    with pytest.raises(ValueError, match="b.bmp: a figure's extension names its format"):
        figure_format("b.bmp")


def _refused(capsys, argv: list[str]) -> str:
    """The command's parser refuses ``argv`` (exit 2, one line): no model is named that exists, so nothing ran."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, image, capsys):
    folder, afile = tmp_path / "folder", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("x")
    model = ["--model", str(tmp_path / "no-such-model")]  # never loaded: the parser refuses first
    for cmd in (["heatmap", str(image), "q"], ["segment", str(image), "q"], ["localize", str(image), "q"]):
        assert f"{folder}: is a folder" in _refused(capsys, [*cmd, *model, "--out", str(folder)])
        assert f"{folder}: is a folder" in _refused(capsys, [*cmd, *model, "--json", str(folder)])
        assert "fig.bmp: a figure's extension" in _refused(capsys, [*cmd, *model, "--out", str(tmp_path / "fig.bmp")])
        line = _refused(capsys, [*cmd, *model, "--out", str(afile / "fig.png")])
        assert f"{afile} is a file, not a folder" in line
    assert f"{afile}: is a file" in _refused(capsys, ["demo", "--out", str(afile)])
    assert f"{afile}: is a file" in _refused(capsys, ["extract", *model, "--images", str(tmp_path), "--cache",
                                                     str(afile)])
    assert f"{folder}: is a folder" in _refused(capsys, ["upsampler", "train", *model, "--images", str(tmp_path),
                                                        "--out", str(folder)])


def test_os_errors_are_one_line_naming_the_path():
    assert one_line(IsADirectoryError(21, "Is a directory", "/x/.bad.1.tmp")) == "/x/.bad.1.tmp: is a directory"
    assert one_line(FileExistsError(17, "File exists", "out")) == "out: file exists"
    renamed = IsADirectoryError(21, "Is a directory", "/x/.bad.1.tmp", None, "/x/bad")  # os.replace(tmp, folder)
    assert one_line(renamed) == "/x/bad: is a directory"
    assert one_line(NotADirectoryError(20, "Not a directory", "c/x")) == "c/x: not a directory"


def test_probe_train_without_out_says_so_before_the_work(tmp_path, capsys):
    """The note comes first: here the data check then fails, so nothing was trained when it was printed."""
    from dense.datasets import make_shapes

    make_shapes(tmp_path / "w", 7, seed=3, size_range=(48, 64))
    argv = ["probe", "train", "--model", str(tmp_path / "no-such-model"), "--ann", str(tmp_path / "w" /
            "annotations.json"), "--images", str(tmp_path / "w" / "images"), "--cache", str(tmp_path / "c"),
            "--test-split", "nosuch", "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("note: no --out: the chosen probe is scored, then discarded")
    assert main([*argv, "--out", str(tmp_path / "p.safetensors")]) == 1
    assert "note:" not in capsys.readouterr().out


def test_dense_tensor_files_are_named_by_their_format(tmp_path, capsys):
    model = ["--model", str(tmp_path / "no-such-model")]
    line = _refused(capsys, ["probe", "refer", *model, "--ann", __file__, "--refs", __file__, "--images",
                             str(tmp_path), "--out", str(tmp_path / "head.pt")])
    assert "head.pt: dense writes this as safetensors; name it *.safetensors" in line
    assert "up.pt: dense writes" in _refused(capsys, ["upsampler", "train", *model, "--images", str(tmp_path),
                                                     "--out", str(tmp_path / "up.pt")])


def test_probe_refer_shows_its_progress_unless_quiet(tiny_siglip_dir, tmp_path, capsys):
    from dense.datasets import make_shapes

    make_shapes(tmp_path / "w", 8, seed=4, size_range=(48, 64), splits={"train": 0.5, "val": 0.5})
    argv = ["probe", "refer", "--model", str(tiny_siglip_dir), "--ann", str(tmp_path / "w" / "annotations.json"),
            "--refs", str(tmp_path / "w" / "refs.json"), "--images", str(tmp_path / "w" / "images"), "--steps", "3",
            "--out", str(tmp_path / "head.safetensors")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "refer head" in captured.err and "3/3" in captured.err  # the training bar, to its end
    assert f"wrote {tmp_path / 'head.safetensors'}" in captured.out
    assert main([*argv, "--quiet"]) == 0
    assert "refer head" not in capsys.readouterr().err


def test_every_command_writes_through_finish():
    """The rule in the code: in dense/cli, a file is written only inside a writer handed to ``_args.finish`` (a lambda
    or a nested function), so no command can print its results before its files exist."""
    import ast
    from pathlib import Path

    writers = {"write_json", "save_figure", "update_calibration", "save"}
    found = []
    for path in sorted(Path(ROOT, "dense", "cli").glob("*.py")):
        if path.name == "_args.py":
            continue
        tree = ast.parse(path.read_text())
        for top in tree.body:
            if not isinstance(top, ast.FunctionDef):
                continue
            nested = {id(n) for f in ast.walk(top) if isinstance(f, (ast.Lambda, ast.FunctionDef)) and f is not top
                      for n in ast.walk(f)}
            for node in ast.walk(top):
                if isinstance(node, ast.Call) and id(node) not in nested:
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name in writers:
                        found.append(f"{path.name}:{node.lineno} {top.name} calls {name} directly")
    assert not found, found

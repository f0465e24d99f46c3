"""The `dense` command: help for every subcommand, one-line errors, and the offline demo end to end."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dense.cli import build_parser, main


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    names = []
    for name, sub in _subcommands(parser):
        names.append(name)
        assert sub.format_help().strip()
        for child, _ in _subcommands(sub):
            names.append(f"{name} {child}")
    for expected in ("extract", "probe", "probe train", "probe test", "heatmap", "segment", "eval openvocab",
                     "eval refer", "demo"):
        assert expected in names, names
    assert main([]) == 2  # no command: usage, exit 2
    assert "COMMAND" in capsys.readouterr().out


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dense.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_errors_are_one_line_unless_debug(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = _run("heatmap", bad, "a cat", "--model", "shapes-tiny", "--out", tmp_path / "x.png")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dense: error:") and "bad.png" in lines[0], out.stderr
    for debug_first in (True, False):  # --debug before or after the command
        args = ["heatmap", bad, "a cat", "--model", "shapes-tiny", "--out", tmp_path / "x.png"]
        out = _run("--debug", *args) if debug_first else _run(*args, "--debug")
        assert out.returncode == 1 and "Traceback" in out.stderr


def test_argument_errors_are_one_line_and_name_the_command(tmp_path):
    out = _run("heatmap", tmp_path / "missing.png", "a cat", "--model", "shapes-tiny")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "missing.png: no such file" in lines[0], out.stderr
    assert lines[0].startswith("dense heatmap: error:")
    out = _run("eval", "openvocab", "--ann", tmp_path, "--images", tmp_path, "--model", "m", "--sweeep", "0.1")
    assert out.returncode == 2 and out.stderr.startswith("dense eval openvocab: error:")  # the subcommand's usage
    bad = tmp_path / "x.png"
    bad.write_bytes(b"")
    out = _run("segment", bad, "cat", "--mod", "shapes-tiny")  # no abbreviations
    assert out.returncode == 2 and "--model" in out.stderr
    (tmp_path / "empty").mkdir()
    out = _run("extract", "--model", "shapes-tiny", "--images", tmp_path / "empty", "--cache", tmp_path / "c")
    assert out.returncode == 1 and "no images" in out.stderr  # an empty folder is an error, not a success
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "bad.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(imgs / "good.png")
    out = _run("extract", "--model", "shapes-tiny", "--images", imgs, "--cache", tmp_path / "c2", "--skip-bad",
               "--quiet")
    assert out.returncode == 0 and (out.stdout + out.stderr).count("bad.png") == 1, out  # reported once
    assert "1 unreadable" in out.stdout
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("dense ")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.mark.slow
def test_demo_runs_offline_and_writes_its_page(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-images", "40"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed
    summary = json.loads((out / "summary.json").read_text())
    for key in ("probe_test_mIoU", "refer_acc@0.5", "refer_pointing"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["probe_test_mIoU"] > 0.1  # far above chance for 17 classes, even on 40 images
    links = _Links()
    links.feed((out / "index.html").read_text())
    kinds = {Path(s).name.split("_")[0] for s in links.srcs}
    assert {"pca", "heatmap", "probe", "refer"} <= kinds
    assert all((out / s).stat().st_size > 1000 for s in links.srcs)


def test_demo_on_user_photos_needs_queries(tmp_path):
    from dense.demo import run_demo

    with pytest.raises(ValueError, match=r"images= needs queries="):
        run_demo(tmp_path / "o", images=tmp_path)

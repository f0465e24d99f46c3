"""The `dense` command: help for every subcommand, one-line errors, and the offline demo end to end."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

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
    for expected in ("extract", "probe", "probe train", "probe eval", "heatmap", "segment", "eval openvocab",
                     "eval refer", "demo"):
        assert expected in names, names
    assert main([]) == 2  # no command: usage, exit 2
    assert "COMMAND" in capsys.readouterr().out


def test_errors_are_one_line_unless_debug(tmp_path):
    cmd = [sys.executable, "-m", "dense.cli", "heatmap", str(tmp_path / "missing.png"), "a cat", "--model",
           "shapes-tiny", "--out", str(tmp_path / "x.png")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dense: error:") and "missing.png" in lines[0], out.stderr
    out = subprocess.run([sys.executable, "-m", "dense.cli", "--debug", *cmd[3:]], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr


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

    with pytest.raises(ValueError, match="--queries"):
        run_demo(tmp_path / "o", images=tmp_path)

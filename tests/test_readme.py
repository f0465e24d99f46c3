"""The README is code: every Python block runs as written, and every command line of its "Command line" section runs
through ``dense.cli.main`` and exits 0.

They run in a folder this test makes, holding the files the README names (the table :data:`FILES`), with the hub
ids swapped for the bundled or a tiny model (:data:`MODELS`) and the command lines' placeholders swapped for those
files (:data:`WORDS`); without a GPU, ``--device cuda`` runs on the CPU (:data:`NO_GPU`). Nothing else is changed
(but for :data:`APPENDED`, one training length): a README call whose signature drifts from the code fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import segdata_layouts
from conftest import random_rgb
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BUNDLED = ROOT / "dense" / "checkpoints" / "shapes-tiny-v2"

# hub id in the README -> what this test loads in its place ("naflex": the session's tiny NaFlex checkpoint)
MODELS = {"google/siglip2-so400m-patch14-384": "shapes-tiny-v2", "google/siglip2-so400m-patch16-naflex": "naflex"}

# every file or folder the README's blocks and command lines name, and what this test makes there
FILES = {
    "photo.jpg": "a made 96 x 160 RGB JPEG",
    "other.jpg": "a made 128 x 96 RGB JPEG",
    "shapes/": "dense.datasets.make_shapes(14 images, train/val/test)",
    "VOCdevkit/VOC2012": "tests/segdata_layouts.voc_official",
    "ADEChallengeData2016": "tests/segdata_layouts.ade150_official",
    "M/": "a copy of the bundled shapes-tiny-v2 (the calibration line writes into M/dense_calibration.json)",
}

# a whole word of a command line -> its value here (after `...`, `[...]` and `a|b` are resolved: see `commands`)
WORDS = {
    "M": "M",  # the folder M/ of FILES: a model that the calibration line may write into
    "DIR": "shapes/images",
    "C": "cache",
    "IMAGE": "photo.jpg",
    "annotations.json": "shapes/annotations.json",
    "refs.json": "shapes/refs.json",
    "M/dense_calibration.json": "M/dense_calibration.json",
}

# on a machine without a GPU (CI, this project's machines), the README's GPU words run on the CPU instead
NO_GPU = {"cuda": "cpu"}

# command lines too long for the fast suite
SLOW = ("torchrun", "dense upsampler train", "--methods all")
# the one change to a line as written: flags appended to a training run whose default length is a real training run
# (probe refer's 1,500 default steps), so that the whole suite stays short; the line's own flags still all run
APPENDED = {"probe refer": ["--steps", "20"]}

# Python blocks that fail as written: the block's index and the error it raises now. Strict: a block that starts to
# pass must be removed from here.
BROKEN_BLOCKS: dict[int, type] = {}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """The "Command line" section's lines as argument lists: continuations joined, comments dropped, ``[optional
    flags]`` kept, ``a|b`` alternatives as their first, and ``...`` filled in from earlier lines: after a flag, that
    flag's value on the latest line that has it; after the command's name, all the flags of its latest line."""
    section = README.read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    out: list[list[str]] = []
    for line in block.splitlines():
        words = [w.strip("[]") for w in shlex.split(line, comments=True)]
        words = [w.split("|")[0] if re.fullmatch(r"[\w-]+(\|[\w-]+)+", w) else w for w in words]
        filled: list[str] = []
        for k, w in enumerate(words):
            if w != "...":
                filled.append(w)
            elif words[k - 1].startswith("--"):
                earlier = next(prev for prev in reversed(out) if words[k - 1] in prev)
                filled.append(earlier[earlier.index(words[k - 1]) + 1])
            else:
                earlier = next(prev for prev in reversed(out) if _command_name(prev) == _command_name(words))
                filled.extend(earlier[len(_command_prefix(earlier)):])
        words = [WORDS.get(w, w) for w in filled]
        if not _has_gpu():
            words = [NO_GPU.get(w, w) for w in words]
        out.append(words + APPENDED.get(_command_name(filled), []))
    return out


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _command_prefix(words: list[str]) -> list[str]:
    """The words that name the command: ``dense probe train``, ``torchrun ... -m dense.cli extract``."""
    from dense.cli import build_parser
    from dense.cli._args import walk

    known = {cmd for cmd, _ in walk(build_parser())}
    start = words.index("dense.cli") + 1 if "dense.cli" in words else 1
    k = max(k for k in range(start, len(words) + 1) if " ".join(words[start:k]) in known | {""})
    return words[:k]


def _command_name(words: list[str]) -> str:
    prefix = _command_prefix(words)
    return " ".join(prefix[prefix.index("dense.cli") + 1 if "dense.cli" in prefix else 1:])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_siglip2_dir):
    """The folder of :data:`FILES`, the current directory of every block and command line."""
    from dense.datasets import make_shapes

    d = tmp_path_factory.mktemp("readme")
    Image.fromarray(random_rgb(96, 160, seed=1)).save(d / "photo.jpg")
    Image.fromarray(random_rgb(128, 96, seed=2)).save(d / "other.jpg")
    make_shapes(d / "shapes", 14, seed=3, splits={"train": 0.5, "val": 0.25, "test": 0.25})
    segdata_layouts.voc_official(d)
    segdata_layouts.ade150_official(d)
    shutil.copytree(BUNDLED, d / "M")
    assert all((d / name).exists() for name in FILES)
    models = {hub: str(tiny_siglip2_dir) if local == "naflex" else local for hub, local in MODELS.items()}
    return d, models


def test_the_tables_name_every_placeholder_of_the_readme():
    """A README edit that adds a file or a placeholder must add it to this test's tables (FILES, WORDS)."""
    text = "\n".join(python_blocks())
    named = set(re.findall(r'"([\w./-]+\.(?:jpg|png|json|safetensors))"', text))
    made = {"probe.safetensors"}  # written by an earlier line of the same block
    assert named - made <= {f for f in FILES if "." in f} | {"shapes/annotations.json", "shapes/refs.json"}, named
    assert set(re.findall(r"google/[\w.-]+", text)) <= set(MODELS)
    cmds = commands()
    assert len(cmds) >= 10 and all(c[0] in ("dense", "torchrun") for c in cmds)
    assert not [w for c in cmds for w in c if w == "..." or "|" in w or w in set(WORDS) - set(WORDS.values())]
    probe_test = next(c for c in cmds if c[1:3] == ["probe", "test"])  # `--ann ...`: the latest line's --ann
    assert probe_test[probe_test.index("--ann") + 1] == "shapes/annotations.json"


def _run_block(index: int, world, namespace: dict) -> None:
    d, models = world
    source = python_blocks()[index]
    for hub, local in models.items():
        source = source.replace(f'"{hub}"', repr(local))
    cwd = os.getcwd()
    os.chdir(d)
    try:
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "readme"}


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block_runs_as_written(index, world, namespace, one_thread):
    """Blocks run in README order in one namespace, as a reader would run them (block 1 uses block 0's ``enc``)."""
    if index in BROKEN_BLOCKS:
        with pytest.raises(BROKEN_BLOCKS[index]):
            _run_block(index, world, namespace)
        pytest.xfail(f"README python block {index} raises {BROKEN_BLOCKS[index].__name__} as written")
    _run_block(index, world, namespace)


def test_python_blocks_compute_what_their_comments_say(world, namespace, one_thread):
    """Block 0's names hold what its comments promise (a FeatureMap, [2] probabilities, an int32 [H, W] map)."""
    if "where" not in namespace:
        _run_block(0, world, namespace)
    photo_hw = (96, 160)
    assert namespace["fmap"].image_hw == photo_hw and namespace["rgb"].shape == (*photo_hw, 3)
    assert np.asarray(namespace["probs"]).shape == (2,)
    assert namespace["labels"].dtype == np.int32 and namespace["labels"].shape == photo_hw
    assert namespace["path"] == "other.jpg" and namespace["f"].image_hw == (128, 96)


def _command_id(words: list[str]) -> str:
    return " ".join(words)[:90]


def _marks(words: list[str]):
    line = " ".join(words)
    return [pytest.mark.slow] if any(s in line for s in SLOW) else []


@pytest.mark.parametrize("words", [pytest.param(c, id=_command_id(c), marks=_marks(c)) for c in commands()])
def test_command_line_runs_as_written(words, world, one_thread):
    from dense.cli import main

    d, _ = world
    cwd = os.getcwd()
    os.chdir(d)
    try:
        if words[0] == "torchrun":
            exe = shutil.which("torchrun")
            if exe is None:
                pytest.skip("no torchrun on PATH")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            out = subprocess.run([exe, *words[1:]], env=env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, out.stderr[-3000:]
        else:
            assert main(words[1:]) == 0, " ".join(words)
    finally:
        os.chdir(cwd)

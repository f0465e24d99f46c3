"""dense.extract.fill_cache under a real two-process gloo group on this CPU (two Python processes with torchrun's
environment): a resume whose remaining work sits in one rank's old shard, a rank that raises, a rank whose process
dies, two ranks filling one fresh cache; and commands other than ``dense extract`` that must not shard under
torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense.cache import FeatureCache, dataset_namespace
from dense.extract import extract_to_cache, fill_cache, folder_items

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

CHILD = r"""
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from dense.distributed import init_distributed, plan_distributed
from dense.extract import fill_cache, folder_items
init_distributed(plan_distributed("cpu"))  # one group for every scenario (fill_cache joins it, leaves it up)
ckpt, *scenarios = sys.argv[1:]
out = {}
for scenario in scenarios:
    images, cache, how = scenario.split("|")
    if how == "rank 1 dies" and torch.distributed.get_rank() == 1:
        os._exit(9)  # a hard death: no exception, no report, the connections close
    try:
        rep = fill_cache(ckpt, folder_items(images), cache, dataset=Path(images), dtype="fp32", compile=False,
                         batch_size=2, progress=False)
        out[images] = {"total": rep.total, "extracted": rep.extracted, "cached": rep.cached, "ranks": rep.ranks,
                       "extracted_per_rank": rep.extracted_per_rank}
    except Exception as e:
        out[images] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""


def make_images(folder: Path, n: int, broken: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        path = folder / f"a{k:02d}.png"
        if k in broken:
            path.write_bytes(b"")  # unreadable: ImageError naming it
            continue
        h, w = (int(v) for v in rng.integers(24, 90, size=2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(ckpt: Path, scenarios: list[tuple[Path, Path, str]], timeout_s: float = 300) -> list[dict]:
    """Two processes with the environment torchrun gives its workers, running ``fill_cache`` on each ``(images,
    cache root, how)`` in turn in one gloo group (Python starts once: seconds on a loaded machine); each rank's
    results by image folder. ``how="rank 1 dies"``: rank 1's process exits there instead (the last scenario)."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), *("|".join(map(str, s))
                                                                                for s in scenarios)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout_s)  # a hang fails the test here
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert stdout.strip(), stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))  # what it had done when it ended
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_siglip_dir, tiny_encoder):
    """The three scenarios, prepared here and run by one pair of ranks: ``{name: (images, cache root, [rank 0's
    result, rank 1's])}``."""
    base = tmp_path_factory.mktemp("dist")
    resume = make_images(base / "resume", 12)
    cache = FeatureCache.for_encoder(base / "resume-cache", tiny_encoder, dataset=resume)
    extract_to_cache(tiny_encoder, folder_items(resume)[0::2], cache, progress=False)  # the old rank 0's shard
    fresh = make_images(base / "fresh", 9)
    failing = make_images(base / "failing", 10, broken=(7,))  # sorted missing keys: a07 is rank 1's (odd places)
    dies = make_images(base / "dies", 4)
    scenarios = {"resume": (resume, base / "resume-cache", "-"), "fresh": (fresh, base / "fresh-cache", "-"),
                 "failing": (failing, base / "failing-cache", "-"), "dies": (dies, base / "dies-cache", "rank 1 dies")}
    ranks = run_two_ranks(tiny_siglip_dir, list(scenarios.values()))
    return {name: (images, root, [r.get(str(images)) for r in ranks])
            for name, (images, root, _) in scenarios.items()}


def entries(cache: FeatureCache) -> dict[str, torch.Tensor]:
    return {k: cache.load(k).tokens for k in cache.keys()}


def leftovers(cache: FeatureCache) -> list[Path]:
    """Anything in the cache's folder but entries and spec.json: temp files, failure markers."""
    return [p for p in cache.dir.rglob("*") if p.is_file() and p.name != "spec.json"
            and not (p.suffix == ".safetensors" and not p.name.startswith("."))]


@pytest.mark.slow  # two Python processes start (seconds quiet, a minute on a loaded machine)
def test_a_resume_shares_the_missing_keys_not_the_old_shards(runs, tiny_encoder):
    images, root, (rep0, rep1) = runs["resume"]
    assert "error" not in rep0 and rep0 == rep1, (rep0, rep1)  # every rank returns the total
    assert (rep0["total"], rep0["cached"], rep0["extracted"], rep0["ranks"]) == (12, 6, 6, 2)
    assert rep0["extracted_per_rank"] == [3, 3]  # the old rule, sorted(keys)[rank::2], gave rank 0 none, rank 1 six
    cache = FeatureCache(root, tiny_encoder.spec(), dataset_namespace(images))
    assert sorted(cache.keys()) == [k for k, _ in folder_items(images)] and leftovers(cache) == []
    for key, path in folder_items(images)[1::4]:  # extracted by the ranks
        torch.testing.assert_close(cache.load(key).tokens, tiny_encoder.extract(path).tokens, rtol=0, atol=1e-5)


@pytest.mark.slow  # two Python processes start (seconds quiet, a minute on a loaded machine)
def test_two_ranks_fill_one_fresh_cache_each_key_once(runs, tiny_encoder):
    images, root, (rep0, rep1) = runs["fresh"]
    assert "error" not in rep0 and rep0 == rep1, (rep0, rep1)
    assert rep0["extracted_per_rank"] == [5, 4] and rep0["extracted"] == 9 and rep0["cached"] == 0
    cache = FeatureCache(root, tiny_encoder.spec(), dataset_namespace(images))
    assert sorted(cache.keys()) == [k for k, _ in folder_items(images)] and leftovers(cache) == []
    for key, path in folder_items(images)[:2]:  # one of each rank's
        torch.testing.assert_close(cache.load(key).tokens, tiny_encoder.extract(path).tokens, rtol=0, atol=1e-5)


@pytest.mark.slow  # two Python processes start (seconds quiet, a minute on a loaded machine)
def test_a_rank_that_raises_stops_the_other_with_one_line(runs, tiny_encoder):
    images, root, (rep0, rep1) = runs["failing"]
    assert rep1["error"].startswith("ImageError") and "a07.png" in rep1["error"]  # its own error, as raised
    assert rep0["error"].startswith("RankFailed: rank 1 of 2 failed: ImageError") and "a07.png" in rep0["error"]
    assert "\n" not in rep0["error"]
    cache = FeatureCache(root, tiny_encoder.spec(), dataset_namespace(images))
    assert leftovers(cache) == []  # no temp file, no failure marker
    for key in cache.keys():  # whatever was written is whole
        assert cache.get(key) is not None


@pytest.mark.slow  # two Python processes start (seconds quiet, a minute on a loaded machine)
def test_a_rank_whose_process_dies_stops_the_other_with_one_line(runs):
    _, _, (rep0, rep1) = runs["dies"]
    assert rep1 is None  # it never reported
    assert rep0["error"].startswith("RankFailed: rank 0: another rank of 2 stopped without reporting")
    assert "\n" not in rep0["error"]


def test_other_commands_under_torchrun_do_not_shard(tmp_path, tiny_encoder, monkeypatch):
    """A launcher's environment without a group: extract_to_cache (probe evaluation, the demo) does every image it
    is given, and fill_cache(distributed=False) too."""
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    images = make_images(tmp_path / "img", 5)
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset=images)
    rep = extract_to_cache(tiny_encoder, folder_items(images), cache, progress=False)
    assert (rep.total, rep.extracted) == (5, 5)
    rep = fill_cache(tiny_encoder, folder_items(images), tmp_path / "d", dataset=images, distributed=False,
                     progress=False)
    assert (rep.total, rep.extracted, rep.ranks) == (5, 5, 1)

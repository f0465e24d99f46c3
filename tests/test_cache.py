"""dense.cache: keys, atomic resumable writes, corrupt entries, SIGKILL-and-resume, sharding (in-process, torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense._atomic import host_name, temp_path
from dense.cache import FeatureCache, dataset_namespace
from dense.extract import extract_to_cache, folder_items

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: see conftest.one_thread


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(24, 90, size=2))
        sub = folder / ("sub" if k % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"img{k:03d}.png")
    return folder


def snapshot(cache: FeatureCache) -> dict[str, torch.Tensor]:
    return {k: cache.load(k).tokens.clone() for k in cache.keys()}


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def test_round_trip_and_keys(tmp_path, tiny_encoder):
    images = make_images(tmp_path / "img", 5)
    items = folder_items(images)
    assert items[0][0] == "img001.png" and any(k.startswith("sub/") for k, _ in items)
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder)
    rep = extract_to_cache(tiny_encoder, items, cache, batch_size=1, progress=False)
    assert (rep.extracted, rep.cached, rep.corrupt) == (5, 0, 0)
    for key, path in items:
        fmap = cache.load(key)
        assert fmap.encoder_spec == tiny_encoder.spec()
        torch.testing.assert_close(fmap.tokens, tiny_encoder.extract(path).tokens, rtol=0, atol=1e-5)
    rep = extract_to_cache(tiny_encoder, items, cache, progress=False)
    assert (rep.extracted, rep.cached) == (0, 5)
    # every part of the spec opens a different folder
    dirs = {cache.dir,
            FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, max_patches=32).dir,
            FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, layers=(0, -1)).dir}
    assert len(dirs) == 3
    with pytest.raises(ValueError, match="not this encoder"):
        extract_to_cache(tiny_encoder, items, cache, max_patches=32, progress=False)
    with pytest.raises(KeyError, match="dense extract"):
        cache.load("nope")


def test_corrupt_entries_are_reextracted(tmp_path, tiny_encoder):
    items = folder_items(make_images(tmp_path / "img", 4))
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder)
    extract_to_cache(tiny_encoder, items, cache, progress=False)
    clean = snapshot(cache)
    k0, k1 = items[0][0], items[1][0]
    data = cache.path(k0).read_bytes()
    # damage as a new file (unlink first): loaded tensors may still be memory-mapped from the old one
    cache.path(k0).unlink()
    cache.path(k0).write_bytes(data[: len(data) // 2])  # truncated
    cache.path(k1).unlink()
    cache.path(k1).write_bytes(b"garbage")
    stray = cache.entries / f".x.safetensors.999999999@{host_name()}.tmp"  # a dead writer's temp file, this host
    stray.write_bytes(b"half")
    rep = extract_to_cache(tiny_encoder, items, cache, progress=False)
    assert (rep.extracted, rep.cached, rep.corrupt) == (2, 2, 2)
    assert not stray.exists()
    assert_same(snapshot(cache), clean)


def test_unreadable_image_is_skipped_with_a_report(tmp_path, tiny_encoder):
    images = make_images(tmp_path / "img", 3)
    (images / "broken.png").write_bytes(b"")
    items = folder_items(images)
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder)
    with pytest.raises(ValueError, match="broken.png"):
        extract_to_cache(tiny_encoder, items, cache, progress=False)
    rep = extract_to_cache(tiny_encoder, items, cache, on_error="skip", progress=False)
    assert len(rep.skipped) == 1 and "broken.png" in rep.skipped[0]
    assert "broken.png" not in cache.keys()


def _cli(images, cache_root, ckpt, *extra):
    return [sys.executable, "-m", "dense.cli", "extract", "--model", str(ckpt), "--images", str(images),
            "--cache", str(cache_root), "--batch-size", "1", "--dtype", "fp32", "--quiet", *extra]


# The child slows each forward pass down so that the kill lands mid-run whatever the machine's speed.
SLOW_CHILD = ("import sys, time, dense.encoder as e; f = e.Encoder._forward; "
              "e.Encoder._forward = lambda self, *a, **k: (time.sleep(0.05), f(self, *a, **k))[1]; "
              "from dense.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_sigkill_and_resume_equals_clean_run(tmp_path, tiny_siglip_dir, tiny_encoder):
    images = make_images(tmp_path / "img", 40)
    root = tmp_path / "killed"
    cache = FeatureCache(root, tiny_encoder.spec(), dataset_namespace(images))  # the CLI's folder namespace
    cmd = [sys.executable, "-c", SLOW_CHILD, *_cli(images, root, tiny_siglip_dir)[3:]]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(cache.keys()) < 3:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(cache.keys())
    assert 0 < done < 40
    for k in cache.keys():  # whatever is there is whole
        assert cache.get(k) is not None
    rep = extract_to_cache(tiny_encoder, folder_items(images), cache, batch_size=1, progress=False)
    assert (rep.cached, rep.extracted, rep.corrupt) == (done, 40 - done, 0)  # only the missing entries
    assert not list(cache.dir.rglob("*.tmp"))
    clean = FeatureCache(tmp_path / "clean", tiny_encoder.spec())
    extract_to_cache(tiny_encoder, folder_items(images), clean, batch_size=1, progress=False)
    assert_same(snapshot(cache), snapshot(clean))


@pytest.mark.slow
def test_torchrun_two_processes_equals_single_run(tmp_path, tiny_siglip_dir, tiny_encoder):
    images = make_images(tmp_path / "img", 9)
    root = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", *_cli(images, root, tiny_siglip_dir)[2:]]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ranks" in out.stdout and out.stdout.count("cache:") == 1  # rank 0 prints the summary once
    single = FeatureCache(tmp_path / "single", tiny_encoder.spec())
    extract_to_cache(tiny_encoder, folder_items(images), single, batch_size=1, progress=False)
    assert_same(snapshot(FeatureCache(root, tiny_encoder.spec(), dataset_namespace(images))), snapshot(single))


def test_two_datasets_under_one_cache_never_share_entries(tmp_path, tiny_encoder):
    a, b = make_images(tmp_path / "a", 3, seed=0), make_images(tmp_path / "b", 3, seed=1)  # same relative names
    assert [k for k, _ in folder_items(a)] == [k for k, _ in folder_items(b)]
    ca = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset=a)
    cb = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset=b)
    assert ca.entries != cb.entries and ca.dir == cb.dir
    extract_to_cache(tiny_encoder, folder_items(a), ca, progress=False)
    rep = extract_to_cache(tiny_encoder, folder_items(b), cb, progress=False)
    assert (rep.extracted, rep.cached) == (3, 0)  # b's images are b's, whatever their names
    for key, path in folder_items(b):
        torch.testing.assert_close(cb.load(key).tokens, tiny_encoder.extract(path).tokens, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="namespace"):
        FeatureCache(tmp_path / "c", tiny_encoder.spec(), "../x")


def test_stray_temp_files_go_when_old_or_orphaned(tmp_path, tiny_encoder):
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset="ds")
    cache.init()
    now = time.time()
    old = now - 10 * 24 * 3600

    def touch(name: str, mtime: float) -> Path:
        p = cache.entries / name
        p.write_bytes(b"half")
        os.utime(p, (mtime, mtime))
        return p

    here, there = host_name(), "other-node"
    gone = [touch(f".a.safetensors.999999999@{here}.tmp", now),  # dense's temp, writer gone
            touch("b.safetensors.tmpAb12Cd", old),  # safetensors-style, old
            touch(".tmpx81kq2", old),  # tempfile-style, old
            touch(f".c.safetensors.{os.getpid()}@{here}.tmp", old),  # a live pid, but days old (pid reuse)
            touch(f".f.safetensors.{os.getpid()}@{there}.tmp", old),  # another node's, old: its writer is gone
            touch(".g.safetensors.999999999.tmp", old)]  # an older version's host-less name, old
    kept = [touch("d.safetensors.tmpZz99Yy", now),  # fresh: its writer may be running
            touch(f".e.safetensors.{os.getpid()}@{here}.tmp", now),  # a live writer
            touch(f".h.safetensors.999999999@{there}.tmp", now),  # another node's, young: this node cannot see
            # that pid (999999999 is dead HERE), so only age can judge it
            touch(".i.safetensors.999999999.tmp", now),  # host-less (older versions): its host is unknown, young
            touch("tmp1234.safetensors", old)]  # an entry whose key looks like a temp name
    assert cache.remove_stale_temps(now=now) == len(gone)
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
    assert (cache.dir / "spec.json").exists()
    name = temp_path(cache.entries / "k.safetensors").name  # what this process writes: recognised as its own
    assert name == f".k.safetensors.{os.getpid()}@{here}.tmp" and name.startswith(".") and name.endswith(".tmp")

"""Device strings -> devices, with and without torchrun, on a machine without a GPU.

``two_gpus`` makes this CPU-only torch report a CUDA build with two GPUs (the four functions dense asks); nothing runs
on them: these tests pin the mapping, not kernels.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dense.device import resolve_device
from dense.distributed import DistPlan, init_distributed, plan_distributed
from dense.errors import DeviceError


@pytest.fixture
def two_gpus(monkeypatch):
    current = {"index": 1}
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    return current


@pytest.mark.parametrize(("given", "expected"), [("cpu", "cpu"), ("cuda", "cuda:1"), ("cuda:0", "cuda:0"),
                                                  ("cuda:1", "cuda:1"), (torch.device("cuda"), "cuda:1")])
def test_device_strings_map_to_indexed_devices(two_gpus, given, expected):
    assert str(resolve_device(given)) == expected  # "cuda" is the CURRENT device (1 here), never a bare "cuda"


def test_a_gpu_index_past_the_last_is_one_line(two_gpus):
    with pytest.raises(DeviceError, match=r"2 GPU\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="needs a CPU-only torch")
@pytest.mark.parametrize("given", ["cuda", "cuda:0"])
def test_cuda_on_a_cpu_only_torch_says_so(given):
    with pytest.raises(DeviceError, match="built without CUDA"):
        resolve_device(given)


def test_not_a_device_names_it():
    with pytest.raises(DeviceError, match="'gpu please' is not a device"):
        resolve_device("gpu please")


def test_torchrun_gives_each_rank_its_own_gpu_before_the_group(two_gpus):
    assert plan_distributed("cuda", {}) == DistPlan(device="cuda")  # one process: as given, no group
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    plan = plan_distributed("cuda", env)
    assert (plan.rank, plan.world_size, plan.local_rank, plan.device, plan.backend) == (3, 4, 1, "cuda:1", "gloo")
    assert plan_distributed("cuda:0", env).device == "cuda:1"  # never every rank on cuda:0
    assert plan_distributed(torch.device("cuda"), env).device == "cuda:1"
    assert plan_distributed("cpu", env).device == "cpu"
    with pytest.raises(ValueError, match="torchrun"):
        plan_distributed("cuda", {"WORLD_SIZE": "2"})
    calls = []
    made = init_distributed(plan, set_device=lambda d: calls.append(("set_device", str(d))),
                            init_group=lambda backend: calls.append(("init", backend)))
    assert made and calls == [("set_device", "cuda:1"), ("init", "gloo")]  # the device first
    calls.clear()
    two_gpus["index"] = 0
    init_distributed(plan_distributed("cuda", {}), set_device=lambda d: calls.append(str(d)), init_group=calls.append)
    assert calls == ["cuda:0"]  # a single process on "cuda": the current device, with its index
    calls.clear()
    assert not init_distributed(plan_distributed("cpu", {}), set_device=calls.append, init_group=calls.append)
    assert calls == []


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="needs a CPU-only torch")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_extract_on_cuda_with_a_cpu_only_torch_is_exit_1_and_one_line(tmp_path, device):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "img" / "a.png")
    r = subprocess.run([sys.executable, "-m", "dense.cli", "extract", "--model", "shapes-tiny-v2", "--images",
                        str(tmp_path / "img"), "--cache", str(tmp_path / "cache"), "--device", device],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], r.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))

"""Threads: one way to set them (``--threads``, ``load_encoder(threads=)``, :func:`dense.device.set_threads`), reaching
torch, the BLAS libraries (threadpoolctl), later processes and decode workers; and a default that leaves the cores a
loaded machine has taken."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import random_rgb
from PIL import Image

import dense.device as device
from dense.batching import default_num_workers
from dense.cli import main

ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture
def restore_threads(monkeypatch):
    """Whatever a test sets, the session's threads (torch's, the libraries', the variables) come back after it."""
    from threadpoolctl import threadpool_info

    old_torch, old_env = torch.get_num_threads(), {k: os.environ.get(k) for k in ENV}
    old_limits = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()}
    old_set = device._threads_set
    yield
    torch.set_num_threads(old_torch)
    for k, v in old_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        if lib.filepath in old_limits:
            lib.set_num_threads(old_limits[lib.filepath])
    device._threads_set = old_set


@pytest.mark.parametrize(("load", "expected"), [(0.0, 4), (0.4, 4), (1.6, 2), (3.5, 1), (9.0, 1)])
def test_the_default_leaves_the_cores_the_load_takes(monkeypatch, load, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    monkeypatch.setattr(device, "machine_load", lambda: load)
    assert device.default_threads() == expected


@pytest.mark.parametrize(("average", "now", "expected"), [
    (9.0, 12, 9.0),   # busy for a minute and now: the average
    (1.3, 0, 0.0),    # the average remembers a command that just ended here; nothing runs now
    (0.2, 6, 0.2),    # a passing blip now, quiet for a minute
    (3.0, None, 3.0),  # no /proc/loadavg: the average alone
])
def test_machine_load_is_the_smaller_of_the_average_and_now(monkeypatch, average, now, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (average, average, average))
    monkeypatch.setattr(device, "_runnable_others", lambda: now)
    assert device.machine_load() == expected


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="no /proc/loadavg on this OS")
def test_runnable_others_reads_this_machine():
    others = device._runnable_others()
    assert isinstance(others, int) and others >= 0


def test_the_default_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert device.default_threads() == 3


def test_set_threads_reaches_torch_blas_later_processes_and_decode_workers(restore_threads):
    from threadpoolctl import threadpool_info

    assert device.set_threads(3) == 3
    assert torch.get_num_threads() == 3
    assert all(os.environ[k] == "3" for k in ENV)
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 3 for lib in blas)  # numpy's BLAS at least, loaded with torch
    assert default_num_workers(torch.device("cuda"), total=100) == 2  # one core kept for the main process
    assert default_num_workers(torch.device("cpu"), total=100) == 0
    with pytest.raises(ValueError, match="at least 1"):
        device.set_threads(0)


def test_load_encoder_sets_threads_when_given_and_keeps_them_otherwise(restore_threads):
    import dense

    dense.load_encoder("shapes-tiny-v2", threads=2)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # a default after an explicit choice keeps the choice dense made
    device._threads_set = 1
    dense.load_encoder("shapes-tiny-v2")
    assert torch.get_num_threads() == 1


def test_every_command_takes_threads(restore_threads, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(random_rgb(40, 56)).save(img)
    assert main(["heatmap", str(img), "a red circle", "--model", "shapes-tiny-v2", "--threads", "2",
                 "--out", str(tmp_path / "h.png")]) == 0
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    with pytest.raises(SystemExit) as e:
        main(["segment", str(img), "dog", "--model", "shapes-tiny-v2", "--threads", "0"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_memory_readers_agree():
    """The current RSS never exceeds the peak, and a new 64 MiB array shows in the current figure."""
    import numpy as np

    before = device.rss_gib()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched: resident
    after = device.rss_gib()
    assert after - before > 0.05 and device.peak_rss_gib() >= after - 1e-3
    del block
    model, flags = device.cpu_model_and_flags()
    assert model and set(flags) <= {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}

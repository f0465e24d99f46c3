"""Trained heads (LinearProbe, Upsampler, ReferHead) compute where their weights are, in their dtype, and hand back
float32 / numpy on the CPU; the dtype rules of dense.device (float16 refused everywhere, bf16 below sm80 warned).

A CPU-only machine has one device, so the round trips here go through dtypes (a head cast to float64 or bf16 fed the
float32 FeatureMaps every head reads); the same inputs reach a head on a GPU through the same ``to_weights`` call,
checked by the CUDA test when a GPU is present.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from dense.device import bf16_warning, resolve_dtype, to_weights
from dense.features import FeatureMap
from dense.upsample import Upsampler, UpsamplerConfig, upsample_maps
from probes import LinearProbe
from probes.refer_head import ReferHead

D = 12
SPEC = dict(fingerprint="fake", family="siglip", patch_size=8, hidden_size=D, num_layers=2, max_patches=35,
            layers=[1], dtype="float32", rules=1)


def _fmap() -> FeatureMap:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 7, D, generator=g)  # [gh, gw, D] float32, as every FeatureMap holds
    return FeatureMap(tokens, (37, 61), (40, 56), 8, (1,), dict(SPEC))


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8)


def _heads(seed: int = 0):
    torch.manual_seed(seed)
    probe = LinearProbe(D, ["a", "b", "c"], encoder_spec=SPEC, layers=[1]).eval()
    with torch.no_grad():  # a BatchNorm with statistics of its own, so that the round trip is not an identity
        probe.bn.running_mean.normal_()
        probe.bn.running_var.uniform_(0.5, 2.0)
    up = Upsampler(D, UpsamplerConfig(guide_dim=8, key_dim=8), encoder_spec=SPEC, layers=[1]).eval()
    head = ReferHead(D, 6, hidden=8, encoder_spec=SPEC, layers=[1]).eval()
    return probe, up, head


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.bfloat16, 0.1)])
def test_each_head_runs_in_its_weights_dtype_and_returns_float32_on_the_cpu(dtype, tol):
    fmap, rgb = _fmap(), _image()
    text = torch.nn.functional.normalize(torch.randn(2, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    probe, up, head = _heads()
    want_grid, want_up = probe.grid_logits(fmap), up.to_image(fmap, rgb)
    want_refer = head.predict(fmap, text)
    probe, up, head = (m.to(dtype) for m in (probe, up, head))
    got_grid, got_up = probe.grid_logits(fmap), up.to_image(fmap, rgb)
    got_refer = head.predict(fmap, text)  # float32 text and tokens into a float64 / bf16 head
    for got, want in ((got_grid, want_grid), (got_up, want_up), (got_refer["heatmap"], want_refer["heatmap"])):
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    np.testing.assert_allclose(got_refer["box_xyxy"], want_refer["box_xyxy"], atol=tol * 61, rtol=0)
    labels = probe.predict(fmap)
    assert labels.dtype == np.int32 and labels.shape == fmap.image_hw
    if dtype == torch.float64:  # the same labels through every path (bf16 may flip near-ties)
        probe32 = _heads()[0]
        np.testing.assert_array_equal(labels, probe32.predict(fmap))
        np.testing.assert_array_equal(probe.predict(fmap, image=rgb, upsampler=up),
                                      probe32.predict(fmap, image=rgb, upsampler=_heads()[1]))
        maps = upsample_maps(torch.randn(3, 5, 7), fmap, image=rgb, upsampler=up)  # float32 maps, float64 upsampler
        assert maps.dtype == torch.float32 and maps.shape == (3, 37, 61)


def test_to_weights_moves_and_casts_to_the_module():
    lin = torch.nn.Linear(3, 2).to(torch.float64)
    x = torch.randn(4, 3)
    y = to_weights(x, lin)
    assert y.dtype == torch.float64 and y.device == lin.weight.device
    torch.testing.assert_close(y.float(), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_heads_on_a_gpu_give_the_cpu_answers():  # pragma: no cover - runs on GPU machines only
    fmap, rgb = _fmap(), _image()
    text = torch.nn.functional.normalize(torch.randn(2, 6), dim=-1)
    cpu = _heads()
    gpu = [m.to("cuda") for m in _heads()]
    torch.testing.assert_close(gpu[0].grid_logits(fmap), cpu[0].grid_logits(fmap), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(gpu[0].predict(fmap, image=rgb, upsampler=gpu[1]),
                                  cpu[0].predict(fmap, image=rgb, upsampler=cpu[1]))
    torch.testing.assert_close(gpu[2].predict(fmap, text)["heatmap"], cpu[2].predict(fmap, text)["heatmap"],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
@pytest.mark.parametrize("dtype", ["fp16", "float16", torch.float16])
def test_float16_is_refused_on_every_device_in_one_line(device, dtype):
    with pytest.raises(ValueError, match=r"dtype float16 \(on .*\): dense runs in bfloat16 or float32 only") as e:
        resolve_dtype(dtype, device)  # no GPU is needed to resolve a dtype
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("capability", "warned"), [((7, 5), True), ((7, 0), True), ((6, 1), True), ((8, 0), False),
                                                    ((8, 6), False), ((9, 0), False)])
def test_explicit_bf16_below_sm80_gets_a_one_line_warning(capability, warned):
    msg = bf16_warning(torch.bfloat16, torch.device("cuda:0"), capability)
    assert (msg is not None) == warned
    if warned:
        assert "\n" not in msg and f"compute capability {capability[0]}.{capability[1]}" in msg and "auto" in msg
    assert bf16_warning(torch.float32, torch.device("cuda:0"), capability) is None
    assert bf16_warning(torch.bfloat16, torch.device("cpu"), capability) is None


def test_resolve_dtype_logs_the_bf16_warning_on_an_old_gpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with caplog.at_level(logging.WARNING, logger="dense"):
        assert resolve_dtype("bf16", "cuda:0") == torch.bfloat16
        assert resolve_dtype("fp32", "cuda:0") == torch.float32
    assert [r.getMessage().count("compute capability 7.5") for r in caplog.records] == [1]

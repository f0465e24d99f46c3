"""The compiled tower: tokens equal eager's at static padded shapes, the per-machine decision file, compile=False."""

import json
import os
import tempfile

import pytest
import torch
from conftest import random_rgb

import dense
import dense.compiled as dc
from dense.preprocess import choose_grid, to_pixels

# Three grids of the 64-token tiny towers in one batch: 8x8 (64 tokens), 5x12 and 12x4; all padded to one bucket.
SIZES = [(64, 64), (40, 100), (100, 30)]


@pytest.fixture(autouse=True, scope="module")
def shared_inductor_cache():
    """Inductor's kernels are content-addressed: share them across test sessions (as torch's own default folder does),
    so only the first session on a machine pays the C++ builds."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = old or os.path.join(tempfile.gettempdir(), "dense-tests-inductor")
    yield
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def test_inductor_cache_lives_under_dense_home(monkeypatch):
    from dense.checkpoint import dense_home

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert dc.inductor_cache_dir() == dense_home() / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # the user's choice wins
    assert str(dc.inductor_cache_dir()) == "/elsewhere"


def test_compiled_kernels_go_under_dense_home_after_torch_wrote_its_default(monkeypatch):
    """``import torch._dynamo`` (transformers does it) writes torch's /tmp default into the variable: dense must still
    send the kernels under dense_home(), and inductor must read that folder when it builds them."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from dense.checkpoint import dense_home

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch._dynamo's import leaves
    dc._compile(torch.nn.Linear(2, 2), torch.device("cpu"))  # lazy: nothing is built until the first call
    assert cache_dir() == str(dense_home() / "inductor")


def test_bucket_tokens_known_answers():
    # A quarter of 729 rounded up is 183: buckets 183, 366, 549, 732 (and on past the budget).
    assert [dc.bucket_tokens(n, 729) for n in (1, 183, 184, 400, 713, 729, 800)] == [183, 183, 366, 549, 732, 732,
                                                                                     915]
    assert [dc.bucket_tokens(n, 64) for n in (52, 60, 64)] == [64, 64, 64]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_key_mask_equals_transformers_mask(impl):
    from transformers import SiglipVisionConfig
    from transformers.masking_utils import create_bidirectional_mask

    config = SiglipVisionConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    config._attn_implementation = impl
    lengths = torch.tensor([3, 5, 1])
    valid = torch.arange(5)[None] < lengths[:, None]  # [B, N]
    ref = create_bidirectional_mask(config=config, inputs_embeds=torch.zeros(3, 5, 32),
                                    attention_mask=valid.to(torch.int32))
    ours = dc.key_mask(valid, impl, torch.float32)
    assert ours.shape == (3, 1, 5, 5) and ours.dtype == ref.dtype
    assert torch.equal(ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["tiny-siglip", "tiny-siglip2"])
def test_compiled_tokens_equal_eager_in_padded_batches(spec, one_thread):
    """Each image padded to the bucket among other grids gives its own eager one-image tokens (fp32: 1e-5), for two
    encoders of different weights in one process (the frozen weights belong to each tower, not to the code)."""
    images = [random_rgb(h, w, seed=h) for h, w in SIZES]
    for seed in (0, 1):
        eager = dense.random_encoder(spec, dtype="fp32", compile=False, seed=seed)
        compiled = dense.random_encoder(spec, dtype="fp32", compile=True, seed=seed)
        assert compiled.compiled and not eager.compiled
        pixels = [to_pixels(im, choose_grid(im.shape[:2], 8, 64), eager.pixels) for im in images]
        got = compiled.forward_batch(pixels, layers=(0, -1))  # 3 x [gh*gw, 2D], one padded batch
        for px, tokens in zip(pixels, got, strict=True):
            ref = eager.forward_batch([px], layers=(0, -1))[0]  # alone, unpadded, no mask
            assert tokens.shape == ref.shape
            torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=0)
        if seed == 0:
            first = got
    assert (first[0] - got[0]).abs().max() > 0.1  # the second tower did not reuse the first one's weights


def test_compile_false_always_works_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(dc, "MIN_PARAMS", 0)  # the tiny tower would otherwise never be considered
    enc = dense.random_encoder("tiny-siglip", dtype="fp32", compile=False)
    assert not enc.compiled
    fmap = enc.extract(random_rgb(40, 100))
    assert fmap.tokens.shape == (*fmap.grid_hw, 32) and torch.isfinite(fmap.tokens).all()
    key = dc.machine_key(enc.device, enc.dtype, enc.hidden_size)
    assert key not in dc.read_decisions()  # compile=False never measures


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_compile_option_is_one_line_naming_it(bad, tiny_siglip_dir):
    with pytest.raises(ValueError, match="compile="):
        dense.random_encoder("tiny-siglip", compile=bad)
    with pytest.raises(ValueError, match="compile="):
        dense.load_encoder(tiny_siglip_dir, compile=bad)


def test_auto_follows_the_stored_decision(monkeypatch):
    """A stored record decides "auto" (no measuring): compile on/off and whether batches are split per image."""
    monkeypatch.setattr(dc, "MIN_PARAMS", 0)
    enc = dense.random_encoder("tiny-siglip", dtype="fp32")
    key = dc.machine_key(enc.device, enc.dtype, enc.hidden_size)
    dc.write_decision(key, {"compile": False, "batch_pays": False})
    assert enc.execution() == (None, False)
    images = [random_rgb(h, w, seed=h) for h, w in SIZES]
    pixels = [to_pixels(im, choose_grid(im.shape[:2], 8, 64), enc.pixels) for im in images]
    split = enc.forward_batch(pixels)  # one image per pass, as the record says
    enc.compile = False  # an explicit choice re-plans; the record's batch rule still holds
    assert enc.execution() == (None, False)
    dc.write_decision(key, {"compile": True, "batch_pays": True})
    enc.compile = "auto"
    tower, batch_pays = enc.execution()
    assert isinstance(tower, dc.CompiledTower) and batch_pays and enc.compiled
    enc.compile = False
    together = enc.forward_batch(pixels)  # one padded batch
    for a, b in zip(split, together, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert "other machine" not in dc.read_decisions()
    dc.write_decision("other machine", {"compile": True})
    assert dc.read_decisions()[key] == {"compile": True, "batch_pays": True}  # records of other keys are kept


def test_damaged_decision_file_is_reported_and_replaced(caplog):
    path = dc.decision_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with caplog.at_level("WARNING", logger="dense"):
        assert dc.read_decisions() == {}
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    dc.write_decision("k", {"compile": False})
    assert json.loads(path.read_text()) == {"k": {"compile": False}}
    path.unlink()


@pytest.mark.slow
def test_decision_is_measured_once_and_stored(monkeypatch, one_thread):
    """No record: "auto" measures (eager vs compiled slice), stores the figures, and reads them afterwards."""
    monkeypatch.setattr(dc, "MIN_PARAMS", 0)
    enc = dense.random_encoder("tiny-siglip2", dtype="fp32")
    key = dc.machine_key(enc.device, enc.dtype, enc.hidden_size)
    data = dc.read_decisions()
    data.pop(key, None)
    dc.decision_path().parent.mkdir(parents=True, exist_ok=True)
    dc.decision_path().write_text(json.dumps(data))
    on = enc.compiled
    record = dc.read_decisions()[key]
    assert record["compile"] is on and record["compile"] == (record["speedup"] >= dc.PAYS)
    assert record["speedup"] == pytest.approx(record["eager_s"] / record["compiled_s"])
    assert record["tokens"] == 64 and record["blocks"] == 2 and record["first_call_s"] > 0
    assert record["batch_pays"] == (record["batch4_per_image_s"] < dc.BATCH_LOSES * record["eager_s"])
    again = dense.random_encoder("tiny-siglip2", dtype="fp32")
    assert again.compiled is on and dc.read_decisions()[key] == record  # read, not measured again


def test_random_encoder_builds_in_the_target_dtype():
    enc = dense.random_encoder("tiny-siglip", dtype="bf16")
    assert {p.dtype for p in enc.vision.parameters()} == {torch.bfloat16}
    fmap = enc.extract(random_rgb(64, 64))
    assert fmap.tokens.dtype == torch.float32 and torch.isfinite(fmap.tokens).all()


def test_cli_no_compile_flag(tmp_path, capsys):
    from PIL import Image

    from dense.cli import main

    (tmp_path / "img").mkdir()
    Image.fromarray(random_rgb(40, 60)).save(tmp_path / "img" / "a.png")
    assert main(["extract", "--model", "shapes-tiny", "--images", str(tmp_path / "img"), "--cache",
                 str(tmp_path / "c"), "--no-compile", "--quiet", "--dtype", "fp32"]) == 0
    counts = capsys.readouterr().out.strip().splitlines()[-1].split()  # images, extracted, cached, damaged, ...
    assert [int(c) for c in counts] == [1, 1, 0, 0, 0, 1]

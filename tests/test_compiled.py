"""The compiled tower: tokens equal eager's at static padded shapes, graphs per bucket, the opt-in decision record."""

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


def _no_record(enc) -> str:
    """Remove this machine's record for ``enc`` (other keys kept); returns its key."""
    key = dc.machine_key(enc.device, enc.dtype, enc.hidden_size)
    data = dc.read_decisions()
    if data.pop(key, None) is not None:
        dc.decision_path().write_text(json.dumps(data))
    return key


def _batches_seen(enc) -> list[int]:
    """The batch size of every pass through block 0, recorded by a forward hook (eager layers only)."""
    seen: list[int] = []
    enc.vision.encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(int(args[0].shape[0])))
    return seen


def test_compile_false_always_works_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(dc, "MIN_PARAMS", 0)  # the tiny tower would otherwise never be considered
    enc = dense.random_encoder("tiny-siglip", dtype="fp32", compile=False)
    key = _no_record(enc)
    assert not enc.compiled and enc.execution().why == "compile=False"
    fmap = enc.extract(random_rgb(40, 100))
    assert fmap.tokens.shape == (*fmap.grid_hw, 32) and torch.isfinite(fmap.tokens).all()
    assert key not in dc.read_decisions()  # compile=False never measures


def test_auto_without_a_record_runs_eager_writes_nothing_and_says_once(monkeypatch, caplog):
    """The default: no record, no measuring, no file; the plain layers run at the batch size asked; one line (for the
    whole process) says how to measure."""
    monkeypatch.setattr(dc, "MIN_PARAMS", 0)
    monkeypatch.setattr(dc, "_told_how_to_measure", False)
    images = [random_rgb(h, w, seed=h) for h, w in SIZES]
    with caplog.at_level("WARNING", logger="dense"):
        for seed in (0, 1):  # two encoders, one line
            enc = dense.random_encoder("tiny-siglip", dtype="fp32", seed=seed)
            _no_record(enc)
            before = dc.decision_path().read_bytes() if dc.decision_path().exists() else None
            seen = _batches_seen(enc)
            list(enc.extract_many(images, batch_size=3, progress=False))
            assert enc.execution() == (None, "no record") and not enc.compiled
            assert seen == [3]  # the eager layers ran, once, on the batch asked for
    lines = [r.getMessage() for r in caplog.records if dc.HOW_TO_MEASURE in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    after = dc.decision_path().read_bytes() if dc.decision_path().exists() else None
    assert after == before  # nothing written


def test_toy_towers_get_no_line(caplog, monkeypatch):
    monkeypatch.setattr(dc, "_told_how_to_measure", False)
    enc = dense.random_encoder("tiny-siglip", dtype="fp32")
    _no_record(enc)
    with caplog.at_level("WARNING", logger="dense"):
        assert not enc.compiled
    assert not [r for r in caplog.records if dc.HOW_TO_MEASURE in r.getMessage()]


def test_auto_follows_the_stored_record_and_obeys_batch_size(monkeypatch):
    """A stored record decides "auto"; an old record's ``batch_pays: false`` no longer splits batches."""
    enc = dense.random_encoder("tiny-siglip", dtype="fp32")
    key = dc.machine_key(enc.device, enc.dtype, enc.hidden_size)
    dc.write_decision(key, {"compile": False, "batch_pays": False})
    assert enc.execution() == (None, "record")
    seen = _batches_seen(enc)
    images = [random_rgb(h, w, seed=h) for h, w in SIZES]
    pixels = [to_pixels(im, choose_grid(im.shape[:2], 8, 64), enc.pixels) for im in images]
    enc.forward_batch(pixels)
    assert seen == [3]  # one padded batch of 3, as asked
    dc.write_decision(key, {"compile": True})
    enc.compile = "auto"  # re-plans from the record
    tower, why = enc.execution()
    assert isinstance(tower, dc.CompiledTower) and why == "record" and enc.compiled
    enc.compile = False
    assert enc.execution() == (None, "compile=False")
    assert "other machine" not in dc.read_decisions()
    dc.write_decision("other machine", {"compile": True})
    assert dc.read_decisions()[key] == {"compile": True}  # records of other keys are kept
    _no_record(enc)


def test_damaged_decision_file_is_reported_and_ignored(caplog):
    path = dc.decision_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else None
    path.write_text("{not json")
    with caplog.at_level("WARNING", logger="dense"):
        assert dc.read_decisions() == {}
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    dc.write_decision("k", {"compile": False})
    assert json.loads(path.read_text()) == {"k": {"compile": False}}
    if old is None:
        path.unlink()
    else:
        path.write_bytes(old)


@pytest.mark.slow
def test_compile_check_measures_stores_and_auto_follows(one_thread, tmp_path, capsys, monkeypatch):
    """`dense compile-check` is the one way a record is written: it prints the decision and its cost, and "auto"
    follows the record afterwards (in a new encoder too)."""
    from dense.cli import main

    monkeypatch.setattr(dc, "_told_how_to_measure", False)
    enc = dense.random_encoder("tiny-siglip2", dtype="fp32")
    key = _no_record(enc)
    assert not enc.compiled and key not in dc.read_decisions()  # "auto" alone measured nothing
    bundled = dense.load_encoder("shapes-tiny-v2", dtype="fp32", compile=False)
    key = _no_record(bundled)
    assert main(["compile-check", "--model", "shapes-tiny-v2", "--dtype", "fp32", "--batch-size", "3", "--threads", "1",
                 "--json", str(tmp_path / "r.json")]) == 0  # the record is keyed by threads: the one_thread fixture's
    out = capsys.readouterr().out
    record = dc.read_decisions()[key]
    assert json.loads((tmp_path / "r.json").read_text()) == {**record, "path": str(dc.decision_path())}
    assert record["compile"] == (record["speedup"] >= dc.PAYS)
    assert record["speedup"] == pytest.approx(record["eager_s"] / record["compiled_s"])
    assert record["blocks"] == 2 and record["batch_size"] == 3
    assert record["first_call_s"] > 0 and record["cost_s"] >= record["first_call_s"]
    assert f"compiled tower {'ON' if record['compile'] else 'OFF'}" in out and "this check took" in out
    again = dense.load_encoder("shapes-tiny-v2", dtype="fp32")
    assert again.compiled is record["compile"] and again.execution().why == "record"
    assert dc.read_decisions()[key] == record  # read, not measured again
    _no_record(bundled)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_one_graph_per_bucket_whatever_the_batch_size(dynamic_batch, one_thread, monkeypatch):
    """Batches of 3, a partial last batch of 2, batches of 4 and 2 again: one compiled graph for the bucket; a single
    image (extract) adds one more, and only once. With the batch dimension left static (``dynamic_batch=False``:
    ``mark_dynamic`` made a no-op, as the tower was before), every batch size compiles again: 3, 2, 4 and 1."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graph of an earlier test (dynamo's cache is per code object) serves this one
    if not dynamic_batch:
        monkeypatch.setattr(torch._dynamo, "mark_dynamic", lambda *args, **kwargs: None)
    enc = dense.random_encoder("tiny-siglip", dtype="fp32", compile=True)
    ref = dense.random_encoder("tiny-siglip", dtype="fp32", compile=False)
    images = [random_rgb(64, 64, seed=k) for k in range(5)]  # one grid, one bucket

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    start = graphs()
    got = list(enc.extract_many(images, batch_size=3, progress=False))  # batches of 3 and 2
    assert graphs() - start == (1 if dynamic_batch else 2)
    list(enc.extract_many(images + images[:1], batch_size=4, progress=False))  # 4 and 2
    assert graphs() - start == (1 if dynamic_batch else 3)
    one = enc.extract(images[0])  # batch 1: torch gives size 1 its own graph
    enc.extract(images[1])
    assert graphs() - start == (2 if dynamic_batch else 4)
    for fmap, im in zip([*got, one], [*images, images[0]], strict=True):
        torch.testing.assert_close(fmap.tokens, ref.extract(im).tokens, atol=1e-5, rtol=0)


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

"""Streaming probe training: equal to the in-memory trainer, bf16 and pooled cache storage, the paper protocols."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch

from dense.cache import FeatureCache
from dense.errors import MismatchError
from dense.labels import IGNORE
from probes.linear import LinearProbe
from probes.protocols import protocol
from probes.stream import CachedSample, cached_samples
from probes.train import ProbeConfig, Sample, train_probes
from tests.test_probes import NAMES, SPEC, fake_samples

pytestmark = pytest.mark.usefixtures("one_thread")


def to_cache(root, samples, spec=SPEC, dtype=None):
    """Write samples to a cache (optionally storing ``dtype`` tokens); return (cache, streamed samples)."""
    spec = dict(spec, **({"store_dtype": str(dtype).removeprefix("torch.")} if dtype else {}))
    cache = FeatureCache(root, spec)
    cache.init()
    for s in samples:
        cache.put(s.key, dataclasses.replace(s.fmap, encoder_spec=dict(SPEC)))
    labels = {s.key: s.label for s in samples}
    return cache, cached_samples(cache, [s.key for s in samples], [partial(labels.get, s.key) for s in samples])


def same_probes(a, b):
    assert a.best_key == b.best_key and a.val == b.val and a.history == b.history
    for key in a.probes:
        for name, t in a.probes[key].state_dict().items():
            torch.testing.assert_close(t, b.probes[key].state_dict()[name], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_streamed_equals_in_memory(tmp_path, dtype):
    train, val = fake_samples(20, 0), fake_samples(6, 1)
    _, tr = to_cache(tmp_path / "c", train, dtype=dtype)
    _, va = to_cache(tmp_path / "v", val, dtype=dtype)  # same keys as train: another cache
    assert all(isinstance(s, CachedSample) for s in tr)
    assert tr[0].read()[0].dtype == (dtype or torch.float32)  # read in the stored dtype
    cfg = ProbeConfig(lrs=(1e-3, 1e-2), layer_sets=((3,), (1, 3)), epochs=3, batch_size=4, seed=2)
    streamed = train_probes(tr, va, NAMES, cfg, progress=False)
    in_memory = train_probes([Sample(s.key, s.fmap, s.label) for s in tr], va, NAMES, cfg, progress=False)
    same_probes(streamed, in_memory)
    assert streamed.val[streamed.best_key]["mIoU"] > 0.8
    again = train_probes(tr, va, NAMES, cfg, progress=False)  # deterministic
    same_probes(streamed, again)


def test_bn_statistics_stream_exactly(tmp_path):
    train, val = fake_samples(9, 0), fake_samples(3, 1)
    _, tr = to_cache(tmp_path / "c", train)
    res = train_probes(tr, val, NAMES, ProbeConfig(lrs=(1e-2,), epochs=1), progress=False)
    x = torch.cat([s.fmap.tokens.reshape(-1, s.fmap.dim) for s in train]).double()  # every training token
    torch.testing.assert_close(res.best.bn.running_mean, x.mean(0).float())
    torch.testing.assert_close(res.best.bn.running_var, x.var(0, unbiased=False).float())


def test_streamed_labels_are_checked_when_read(tmp_path):
    train = fake_samples(4, 0)
    bad = Sample("odd", train[0].fmap, np.full_like(train[0].label, 7))
    _, tr = to_cache(tmp_path / "c", [*train, bad])
    with pytest.raises(ValueError, match="odd.*exceed"):
        train_probes(tr, tr[:2], NAMES, ProbeConfig(epochs=1), progress=False)
    with pytest.raises(KeyError, match="nope"):
        CachedSample.open("nope", tmp_path / "nope.safetensors", lambda: None)


def test_bf16_store_through_extract(tmp_path, tiny_siglip_dir):
    import dense
    from dense.extract import extract_to_cache

    enc = dense.load_encoder(tiny_siglip_dir)
    rng = np.random.default_rng(0)
    items = [(f"im{k}", rng.integers(0, 256, size=(40 + 7 * k, 64, 3), dtype=np.uint8)) for k in range(3)]
    full = FeatureCache.for_encoder(tmp_path, enc)
    half = FeatureCache.for_encoder(tmp_path, enc, store_dtype=torch.bfloat16)
    assert half.dir != full.dir and half.spec["store_dtype"] == "bfloat16" and "store_dtype" not in full.spec
    extract_to_cache(enc, items, full, progress=False)
    extract_to_cache(enc, items, half, progress=False)
    for key, _ in items:
        a, b = full.load(key), half.load(key)
        assert b.tokens.dtype == torch.bfloat16 and b.encoder_spec == half.spec
        torch.testing.assert_close(b.tokens, a.tokens.to(torch.bfloat16), rtol=0, atol=0)
        assert half.path(key).stat().st_size < 0.75 * full.path(key).stat().st_size
    with pytest.raises(ValueError, match="storage"):
        extract_to_cache(enc, items, half, store_dtype=torch.float32, progress=False)


def test_pooled_cached_at_extraction(tmp_path, tiny_siglip_dir):
    import dense
    from dense.extract import extract_to_cache
    from dense.openvocab import embed_images

    enc = dense.load_encoder(tiny_siglip_dir)
    img = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    cache = FeatureCache.for_encoder(tmp_path, enc, pooled=True)
    extract_to_cache(enc, [("a", img)], cache, progress=False)
    fmap = cache.load("a")
    assert fmap.pooled is not None and fmap.pooled.shape == (enc.hidden_size,)
    want = embed_images(enc, img)[0]  # the unit pooled embedding of the same image
    torch.testing.assert_close(torch.nn.functional.normalize(fmap.pooled, dim=0), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="last block"):
        extract_to_cache(enc, [("b", img)], FeatureCache.for_encoder(tmp_path, enc, layers=(0,), pooled=True),
                         layers=(0,), progress=False)


def pooled_samples(n, seed, K=3):
    """Every patch of an image is one class; the tokens are noise and only the pooled vector says which class."""
    out = []
    rng = np.random.default_rng(seed)
    for s in fake_samples(n, seed, K):
        c = int(rng.integers(0, K))
        label = np.full_like(s.label, c)
        label[0, 0] = IGNORE
        tokens = torch.from_numpy(rng.normal(0, 1, size=tuple(s.fmap.tokens.shape)).astype(np.float32))
        pooled = torch.from_numpy(rng.normal(0, 0.2, size=16).astype(np.float32))
        pooled[c] += 2.0
        out.append(Sample(s.key, dataclasses.replace(s.fmap, tokens=tokens, pooled=pooled), label))
    return out


def test_pooled_heads_learn_what_only_the_pooled_vector_says(tmp_path):
    train, val, test = pooled_samples(40, 0), pooled_samples(12, 1), pooled_samples(12, 2)
    cfg = ProbeConfig(lrs=(1e-2, 3e-2), layer_sets=((3,),), pooled=(False, True), epochs=6, batch_size=4)
    res = train_probes(train, val, NAMES, cfg, progress=False)
    assert res.best_key.endswith("+pooled") and res.best.pooled and len(res.val) == 4
    assert max(v["mIoU"] for k, v in res.val.items() if not k.endswith("+pooled")) < 0.6
    from dense.eval.probe import evaluate_probe

    assert evaluate_probe(res.best, test).figures["mIoU"] > 0.95
    # BN statistics of the pooled channels: each image's vector counted once per token
    n = np.array([s.fmap.grid_hw[0] * s.fmap.grid_hw[1] for s in train])
    p = torch.stack([s.fmap.pooled for s in train]).double()
    mean = (p * torch.from_numpy(n)[:, None]).sum(0) / n.sum()
    torch.testing.assert_close(res.best.bn.running_mean[-16:], mean.float())
    # save/load keeps the flag; features without the pooled vector cannot feed it
    path = res.best.save(tmp_path / "p.safetensors")
    loaded = LinearProbe.load(path)
    assert loaded.pooled
    torch.testing.assert_close(loaded.logits(test[0].fmap), res.best.logits(test[0].fmap))
    with pytest.raises(MismatchError, match="pooled"):
        loaded.predict(dataclasses.replace(test[0].fmap, pooled=None))
    with pytest.raises(MismatchError, match="pooled"):
        train_probes(fake_samples(4, 0), fake_samples(2, 1), NAMES, ProbeConfig(pooled=(True,), epochs=1),
                     progress=False)
    # streamed from a cache that stores pooled vectors: the same probes
    spec = dict(SPEC, pooled=True)
    cache = FeatureCache(tmp_path / "c", spec)
    cache.init()
    for s in train + val:
        cache.put(s.key + ("v" if s in val else ""), dataclasses.replace(s.fmap, encoder_spec=spec))
    tr = cached_samples(cache, [s.key for s in train], [partial(lambda s: s.label, s) for s in train])
    same_probes(train_probes(tr, val, NAMES, cfg, progress=False), res)


def test_protocols():
    assert protocol("last", num_layers=27).layer_sets == ((26,),)
    assert protocol("last-k", num_layers=27).layer_sets == ((23, 24, 25, 26),)
    best = protocol("best-block", num_layers=27, layers=(20, 24, 26))
    assert best.layer_sets == ((20,), (24,), (26,)) and best.layers == (20, 24, 26) and not best.pooled_needed
    p = protocol("pooled", num_layers=27)
    assert p.pooled == (True,) and p.pooled_needed
    every = protocol("all", num_layers=4, k=2)
    assert every.layers == (0, 1, 2, 3) and (2, 3) in every.layer_sets and every.pooled == (False, True)
    with pytest.raises(ValueError, match="unknown"):
        protocol("tips", num_layers=4)


def test_best_single_block_is_chosen_on_val():
    """Block 3 carries the classes, block 1 noise: a sweep over single blocks picks block 3."""
    train, val = fake_samples(24, 0), fake_samples(8, 1)
    p = protocol("best-block", num_layers=4, layers=(1, 3))
    res = train_probes(train, val, NAMES, ProbeConfig(lrs=(1e-2,), layer_sets=p.layer_sets, epochs=4), progress=False)
    assert res.best_key == "lr=0.01 layers=3" and res.best.layers == [3]

"""probes: known-answer training at native aspect ratio, sweep independence, determinism, save/load, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dense.errors import MismatchError
from dense.eval.probe import evaluate_probe
from dense.features import FeatureMap
from dense.labels import IGNORE
from probes.linear import LinearProbe, select_layers
from probes.train import ProbeConfig, Sample, train_probes

P = 8  # patch size of the fake features
SPEC = dict(fingerprint="fake", family="siglip", patch_size=P, hidden_size=12, num_layers=4, max_patches=64,
            layers=[1, 3], dtype="float32")
GRIDS = [(4, 6), (5, 5), (6, 3), (3, 7)]  # not square, not equal: batches must group by grid


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: see conftest.one_thread


def fake_samples(n: int, seed: int, K: int = 3) -> list[Sample]:
    """Patch (i, j) of class c carries a one-hot of c in channels [0, K) of layer 3 (the second chunk) plus noise;
    layer 1 (the first chunk) is pure noise. Each image: left columns one class, right columns another, split at a
    patch boundary; the original image is 1.5 x the resized one, so scoring is at a different resolution."""
    rng = np.random.default_rng(seed)
    D = SPEC["hidden_size"]
    out = []
    for k in range(n):
        gh, gw = GRIDS[k % len(GRIDS)]
        a, b = rng.choice(K, size=2, replace=False)
        cut = int(rng.integers(1, gw))
        grid_label = np.full((gh, gw), a, np.int8)
        grid_label[:, cut:] = b
        tokens = rng.normal(0, 0.3, size=(gh, gw, 2 * D)).astype(np.float32)
        tokens[..., D:D + K] += 2.0 * np.eye(K, dtype=np.float32)[grid_label]
        H, W = int(gh * P * 1.5), int(gw * P * 1.5)
        label = np.kron(grid_label, np.ones((12, 12), np.int8))  # 12 = 1.5 * P original pixels per patch
        label[0, 0] = IGNORE  # an ignored pixel
        fmap = FeatureMap(torch.from_numpy(tokens), (H, W), (gh * P, gw * P), P, (1, 3), dict(SPEC))
        out.append(Sample(f"img{k}", fmap, label))
    return out


NAMES = ["bg", "a", "b"]


def test_known_answer_and_layer_choice():
    train, val = fake_samples(40, 0), fake_samples(12, 1)
    cfg = ProbeConfig(lrs=(1e-3, 1e-2), layer_sets=((1,), (3,), (1, 3)), epochs=8, batch_size=4)
    res = train_probes(train, val, NAMES, cfg, progress=False)
    assert len(res.val) == 6
    noise = [v["mIoU"] for k, v in res.val.items() if k.endswith("layers=1")]
    assert max(noise) < 0.6  # layer 1 carries no signal
    assert res.best_key.endswith("layers=3") or res.best_key.endswith("layers=1,3")
    figs = evaluate_probe(res.best, fake_samples(12, 2)).figures
    assert figs["mIoU"] > 0.95 and figs["pixel_acc"] > 0.97
    assert figs == pytest.approx(evaluate_probe(res.best, fake_samples(12, 2)).figures)
    assert res.best.meta["val"]["mIoU"] == pytest.approx(res.val[res.best_key]["mIoU"])
    # predictions come back at the original resolution, whatever the grid
    s = val[2]
    pred = res.best.predict(s.fmap)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int32 and pred.shape == s.fmap.image_hw
    for losses in res.history.values():
        assert len(losses) == 8


def test_seeded_deterministic_and_heads_independent():
    train, val = fake_samples(16, 0), fake_samples(4, 1)
    cfg = ProbeConfig(lrs=(1e-3, 1e-2), epochs=3, batch_size=4, seed=3)
    a = train_probes(train, val, NAMES, cfg, progress=False)
    b = train_probes(train, val, NAMES, cfg, progress=False)
    for key in a.probes:
        for name, t in a.probes[key].state_dict().items():
            torch.testing.assert_close(t, b.probes[key].state_dict()[name], rtol=0, atol=0)
    alone = train_probes(train, val, NAMES, ProbeConfig(lrs=(1e-2,), epochs=3, batch_size=4, seed=3), progress=False)
    key = next(iter(alone.probes))
    for name, t in alone.probes[key].state_dict().items():  # same head, with or without company in the sweep
        torch.testing.assert_close(t, a.probes[key].state_dict()[name], rtol=1e-4, atol=1e-5)
    other = train_probes(train, val, NAMES, ProbeConfig(lrs=(1e-2,), epochs=3, batch_size=4, seed=4), progress=False)
    assert not torch.equal(other.best.conv.weight, alone.best.conv.weight)


def test_save_load_and_encoder_mismatch(tmp_path):
    train, val = fake_samples(8, 0), fake_samples(4, 1)
    res = train_probes(train, val, NAMES, ProbeConfig(lrs=(1e-2,), layer_sets=((3,),), epochs=2), progress=False)
    path = res.best.save(tmp_path / "p.safetensors")
    loaded = LinearProbe.load(path, encoder_spec=dict(SPEC, max_patches=256, dtype="bfloat16"))  # budget, dtype differ
    assert loaded.class_names == NAMES and loaded.layers == [3] and loaded.encoder_spec == SPEC
    for s in val:
        torch.testing.assert_close(loaded.logits(s.fmap), res.best.logits(s.fmap))
    with pytest.raises(MismatchError, match="hidden_size: trained on 12, given 16"):
        LinearProbe.load(path, encoder_spec=dict(SPEC, hidden_size=16))
    with pytest.raises(MismatchError, match="fingerprint"):
        LinearProbe.load(path, encoder_spec=dict(SPEC, fingerprint="other"))
    with pytest.raises(MismatchError, match="blocks"):
        LinearProbe.load(path, encoder_spec=dict(SPEC, layers=[1]))
    with pytest.raises(TypeError, match="encoder_spec="):  # encoder= is an Encoder, never a spec dict
        LinearProbe.load(path, encoder=dict(SPEC))
    with pytest.raises(MismatchError):
        res.best.predict(FeatureMap(torch.zeros(2, 2, 24), (16, 16), (16, 16), P, (1, 3), dict(SPEC, fingerprint="x")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.safetensors"):
        LinearProbe.load(bad)


def test_select_layers_picks_chunks():
    s = fake_samples(1, 0)[0]
    D = SPEC["hidden_size"]
    torch.testing.assert_close(select_layers(s.fmap, [3]), s.fmap.tokens[..., D:])
    torch.testing.assert_close(select_layers(s.fmap, [-1]), s.fmap.tokens[..., D:])  # -1 = block 3 of 4
    torch.testing.assert_close(select_layers(s.fmap, [1, 3]), s.fmap.tokens)


def test_bad_inputs_name_the_sample():
    train = fake_samples(4, 0)
    bad = Sample("odd", train[0].fmap, np.full_like(train[0].label, 7))
    with pytest.raises(ValueError, match="odd.*exceed"):
        train_probes([*train, bad], train, NAMES, ProbeConfig(epochs=1), progress=False)
    other = Sample("x", FeatureMap(train[0].fmap.tokens, train[0].fmap.image_hw, train[0].fmap.resized_hw, P, (1, 3),
                                   dict(SPEC, fingerprint="other")), train[0].label)
    with pytest.raises(MismatchError, match="x"):
        train_probes([*train, other], train, NAMES, ProbeConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="no val"):
        train_probes(train, [], NAMES, ProbeConfig(epochs=1), progress=False)


def test_cli_train_then_eval(tmp_path, tiny_siglip_dir, tiny_siglip2_dir, capsys):
    from dense.cli import main
    from dense.datasets import make_shapes

    world = make_shapes(tmp_path / "w", 12, seed=0)
    common = ["--model", str(tiny_siglip_dir), "--ann", str(world["annotation_file"]), "--images",
              str(tmp_path / "w" / "images"), "--cache", str(tmp_path / "cache"), "--quiet"]
    out = tmp_path / "probe.safetensors"
    rc = main(["probe", "train", *common, "--epochs", "2", "--lrs", "1e-3,1e-2", "--test-split", "test",
               "--out", str(out), "--json", str(tmp_path / "train.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "<- best" in text and "reported once" in text
    res = json.loads((tmp_path / "train.json").read_text())
    assert set(res["meta"]["sweep"]) == {"lr=0.001 layers=1", "lr=0.01 layers=1"}
    assert res["meta"]["class_names"][0] == "background" and res["probe"] == str(out)
    rc = main(["probe", "test", *common, "--probe", str(out), "--split", "test", "--json", str(tmp_path / "e.json")])
    assert rc == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["figures"]["mIoU"] == pytest.approx(res["figures"]["mIoU"])
    assert 0 <= ev["figures"]["bF"] <= 1 and 0 <= ev["figures"]["trimap_mIoU"] <= 1
    capsys.readouterr()
    rc = main(["probe", "test", *common, "--probe", str(out), "--split", "test", "--sharpen", "guided",
               "--json", str(tmp_path / "g.json")])
    assert rc == 0 and "boundary F" in capsys.readouterr().out
    guided = json.loads((tmp_path / "g.json").read_text())["figures"]
    assert {"mIoU", "bF", "trimap_mIoU"} <= set(guided)
    # one COCO file per split gives the same result as one file with a 'split' field
    data = json.loads(Path(world["annotation_file"]).read_text())
    per_split = []
    for split in ("train", "val", "test"):
        ids = {im["id"] for im in data["images"] if im["split"] == split}
        part = dict(data, images=[{k: v for k, v in im.items() if k != "split"} for im in data["images"]
                                  if im["id"] in ids], annotations=[a for a in data["annotations"]
                                                                    if a["image_id"] in ids])
        (tmp_path / f"{split}.json").write_text(json.dumps(part))
        per_split += ["--ann", f"{split}={tmp_path / f'{split}.json'}"]
    argv = [*common[:2], *per_split, *common[4:]]
    assert main(["probe", "train", *argv, "--epochs", "2", "--lrs", "1e-3,1e-2", "--test-split", "test",
                 "--json", str(tmp_path / "split.json")]) == 0
    assert json.loads((tmp_path / "split.json").read_text())["figures"] == pytest.approx(res["figures"])
    common[1] = str(tiny_siglip2_dir)
    assert main(["probe", "test", *common, "--probe", str(out), "--split", "test"]) == 1
    assert "trained on another encoder" in capsys.readouterr().err
    assert not list(Path(tmp_path / "cache").rglob("*.tmp"))


def test_guided_predict_is_the_guided_filter_of_the_probabilities():
    """LinearProbe.predict(sharpen="guided") == argmax of dense.upsample.guided_upsample on its softmax, with the radius
    and resolution of the calibration: cells of exactly 10 px give radius 10 at full resolution by default (one cell,
    the neutral calibration) and 13 at half resolution with shapes-tiny's (1.3 cells, subsample 2). It needs the
    image, and the image must be the FeatureMap's."""
    import dataclasses

    from dense.checkpoint import Calibration
    from dense.upsample import GUIDED_EPS, guided_upsample

    train, val = fake_samples(12, 0), fake_samples(4, 1)
    probe = train_probes(train, val, NAMES, ProbeConfig(lrs=(1e-2,), epochs=2), progress=False).best
    gh, gw = val[0].fmap.grid_hw
    fmap = dataclasses.replace(val[0].fmap, image_hw=(10 * gh, 10 * gw))  # 10 x 10 px cells
    image = np.random.default_rng(0).integers(0, 255, (10 * gh, 10 * gw, 3), dtype=np.uint8)
    probs = probe.grid_logits(fmap).softmax(0)  # [K, gh, gw]
    for calibration, radius, subsample in ((None, 10, 1),
                                           (Calibration(guided_radius_cells=1.3, guided_subsample=2), 13, 2)):
        expect = guided_upsample(probs, image, radius=radius, eps=GUIDED_EPS, subsample=subsample).argmax(0).numpy()
        got = probe.predict(fmap, sharpen="guided", image=image, calibration=calibration)
        assert got.dtype == np.int32 and (got == expect).all()
    assert (probe.predict(fmap, sharpen="guided", image=image, calibration=Calibration(guided_radius_cells=2.0))
            != probe.predict(fmap, sharpen="guided", image=image)).any()  # the calibration is read
    with pytest.raises(ValueError, match="needs the image"):
        probe.predict(fmap, sharpen="guided")
    with pytest.raises(ValueError, match="made from"):
        probe.predict(fmap, sharpen="guided", image=image[:-1])


def test_cell_counts_equal_pixel_cross_entropy():
    """The training loss on cell counts equals the pixel-level cross-entropy at the original resolution with logits
    held constant over each patch (the patch under each pixel centre, from the geometry module)."""
    from dense.preprocess import pixel_to_grid
    from probes.train import cell_counts

    rng = np.random.default_rng(0)
    K, (gh, gw), (H, W) = 4, (4, 6), (30, 45)
    label = rng.integers(0, K, size=(H, W)).astype(np.int16)
    label[rng.random((H, W)) < 0.1] = IGNORE
    logits = torch.from_numpy(rng.normal(size=(K, gh, gw)))
    counts = cell_counts(label, (gh, gw), K).double()  # [K, gh, gw]
    ours = -(counts * torch.log_softmax(logits, 0)).sum()
    ys, xs = np.mgrid[0:H, 0:W]
    ij = pixel_to_grid(np.stack([xs + 0.5, ys + 0.5], -1), (H, W), (gh * P, gw * P), P)  # [H, W, 2]
    full = logits[:, ij[..., 0], ij[..., 1]]  # [K, H, W]
    want = torch.nn.functional.cross_entropy(full[None], torch.from_numpy(label).long()[None], ignore_index=IGNORE,
                                             reduction="sum")
    torch.testing.assert_close(ours, want)
    assert counts.sum() == (label != IGNORE).sum()


SHAPES_TINY = Path(__file__).resolve().parents[1] / "dense" / "checkpoints" / "shapes-tiny"


@pytest.mark.slow
def test_shapes_tiny_features_beat_random_weights(tmp_path):
    """The probe on shapes-tiny's tokens must clearly beat the same probe on a random tower of the same architecture."""
    from transformers import AutoConfig, AutoModel

    import dense
    from dense.cache import FeatureCache
    from dense.coco import load_coco
    from dense.datasets import make_shapes
    from dense.extract import dataset_items, extract_to_cache
    from probes.train import load_samples

    world = make_shapes(tmp_path / "w", 100, seed=1)
    ds = load_coco(world["annotation_file"], tmp_path / "w" / "images")
    torch.manual_seed(1)
    AutoModel.from_config(AutoConfig.from_pretrained(SHAPES_TINY)).save_pretrained(tmp_path / "rand")
    pre = SHAPES_TINY / "preprocessor_config.json"  # same pixels: patch size, budget, normalization
    if pre.exists():
        (tmp_path / "rand" / pre.name).write_text(pre.read_text())
    scores = {}
    for tag, enc in (("trained", dense.load_encoder("shapes-tiny")), ("random", dense.load_encoder(tmp_path / "rand"))):
        # 256 tokens: at the default 64 (8 x 8 patches of 8 px) both towers are too coarse to separate shapes
        cache = FeatureCache.for_encoder(tmp_path / "cache", enc, max_patches=256)
        extract_to_cache(enc, dataset_items(ds), cache, max_patches=256, progress=False)
        train, val, test = (load_samples(ds, cache, s) for s in ("train", "val", "test"))
        config = ProbeConfig(epochs=20, lrs=(1e-3, 1e-2, 3e-2))
        res = train_probes(train, val, ds.class_names, config, progress=False)
        scores[tag] = evaluate_probe(res.best, test).figures["mIoU"]
    assert scores["trained"] > scores["random"] + 0.1, scores


def test_cli_protocols_and_bf16_cache(tmp_path, tiny_siglip_dir):
    from dense.cli import main
    from dense.datasets import make_shapes

    world = make_shapes(tmp_path / "w", 12, seed=7)
    common = ["--model", str(tiny_siglip_dir), "--ann", str(world["annotation_file"]), "--images",
              str(tmp_path / "w" / "images"), "--cache", str(tmp_path / "cache"), "--quiet"]
    out = tmp_path / "probe.safetensors"
    assert main(["probe", "train", *common, "--epochs", "1", "--lrs", "1e-2", "--protocol", "all", "--last-k", "2",
                 "--store-dtype", "bfloat16", "--out", str(out), "--json", str(tmp_path / "t.json")]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["meta"]["encoder"]["store_dtype"] == "bfloat16" and res["meta"]["encoder"]["pooled"] is True
    assert set(res["meta"]["sweep"]) == {f"lr=0.01 layers={ls}{p}" for ls in ("1", "0,1", "0")
                                         for p in ("", "+pooled")}
    ev = tmp_path / "e.json"
    assert main(["probe", "test", *common, "--probe", str(out), "--split", "val", "--json", str(ev)]) == 0
    best = res["meta"]["sweep"][res["meta"]["best"]]
    assert json.loads(ev.read_text())["figures"]["mIoU"] == pytest.approx(best["mIoU"])


def test_choosing_on_the_training_split_is_said_up_front_and_in_the_report(tmp_path, tiny_siglip_dir, capsys, caplog):
    """`--train-split test --val-split test`: heads chosen on the split they trained on. It runs (a user may want
    it) but says so: a warning before any work, a note beside the sweep, and the flag in the Result's meta."""
    from dense.cli import main
    from dense.datasets import make_shapes

    world = make_shapes(tmp_path / "w", 12, seed=0)
    with caplog.at_level("WARNING", logger="dense"):
        rc = main(["probe", "train", "--model", str(tiny_siglip_dir), "--ann", str(world["annotation_file"]),
                   "--images", str(tmp_path / "w" / "images"), "--cache", str(tmp_path / "cache"), "--quiet",
                   "--epochs", "1", "--lrs", "1e-2", "--train-split", "test", "--val-split", "test",
                   "--out", str(tmp_path / "p.safetensors"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    assert any("chosen on 'test', the split they are trained on" in r.getMessage() for r in caplog.records)
    assert "these are training figures" in capsys.readouterr().out
    meta = json.loads((tmp_path / "r.json").read_text())["meta"]
    assert meta["protocol"]["chosen_on_training_split"] is True

"""dense.refer: known answers by construction (hand-built heatmaps, hand-set MAP heads), CPU, offline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import dense
from dense.features import RULES_VERSION, FeatureMap
from dense.head import pool_with_weights
from dense.preprocess import grid_cell_xyxy, grid_to_pixel_xy
from dense.refer import (
    Localizer,
    box_patch_weights,
    find_peak_grid,
    heatmap_box_xyxy,
    localize,
    localize_heatmap,
    region_embeddings,
)


def geometry_fmap(gh=6, gw=9, p=8, image_hw=(90, 200), dim=1) -> FeatureMap:
    """A FeatureMap whose geometry matters (non-square, per-axis scales differ) and whose tokens do not."""
    return FeatureMap(tokens=torch.zeros(gh, gw, dim), image_hw=image_hw, resized_hw=(gh * p, gw * p), patch_size=p)


# ---------------------------------------------------------------------------------------------------------------------
# Heatmap -> point, box


def test_quadratic_peak_refinement_is_exact_on_a_paraboloid():
    gh, gw = 7, 10
    ii, jj = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    heatmap = 1.0 - 0.02 * (ii - 3.3) ** 2 - 0.01 * (jj - 5.8) ** 2  # [gh, gw], maximum at (3.3, 5.8)
    np.testing.assert_allclose(find_peak_grid(heatmap), [3.3, 5.8], atol=1e-9)
    np.testing.assert_array_equal(find_peak_grid(heatmap, peak="none"), [3, 6])
    # at the border there is no neighbour on one side: the integer peak stays
    edge = torch.zeros(gh, gw)
    edge[0, 4], edge[1, 4], edge[0, 5] = 1.0, 0.5, 0.9
    ij = find_peak_grid(edge)
    assert ij[0] == 0 and 4.0 < ij[1] <= 4.5
    # restricted search: the best allowed patch wins
    allowed = torch.zeros(gh, gw, dtype=torch.bool)
    allowed[6, 0] = True
    np.testing.assert_array_equal(find_peak_grid(heatmap, allowed=allowed, peak="none"), [6, 0])


def test_point_goes_through_the_geometry():
    fmap = geometry_fmap()
    heatmap = torch.zeros(fmap.grid_hw)
    heatmap[2, 7] = 1.0  # a lone spike: the 2nd-order fit is symmetric -> the patch centre exactly
    loc = localize_heatmap(heatmap, fmap)
    np.testing.assert_allclose(loc.point_xy, grid_to_pixel_xy((2, 7), fmap.image_hw, fmap.resized_hw, 8))
    assert loc.score == 1.0 and loc.candidate_index is None


@pytest.mark.parametrize("factor", [1, 4])
def test_box_is_the_component_around_the_peak(factor):
    fmap = geometry_fmap()
    heatmap = torch.zeros(fmap.grid_hw)
    heatmap[1:4, 2:5] = 0.8  # the target blob, rows 1-3, columns 2-4
    heatmap[2, 3] = 1.0  # its peak
    heatmap[4:6, 7:9] = 0.7  # a second blob, above the threshold but not connected
    box = heatmap_box_xyxy(heatmap, fmap, threshold=0.5, factor=factor)
    expect = np.concatenate([grid_cell_xyxy((1, 2), fmap.image_hw, fmap.resized_hw, 8)[:2],
                             grid_cell_xyxy((3, 4), fmap.image_hw, fmap.resized_hw, 8)[2:]])
    if factor == 1:
        np.testing.assert_allclose(box, expect)
    else:  # bilinear blur shifts the edges by less than half a patch, never to the other blob
        cell_wh = np.array([200 / 9, 90 / 6, 200 / 9, 90 / 6])
        assert np.all(np.abs(box - expect) <= cell_wh / 2 + 1e-9), (box, expect)
    # threshold 1 keeps the peak alone; threshold 0 keeps everything -> the whole image
    np.testing.assert_allclose(heatmap_box_xyxy(heatmap, fmap, threshold=0.0, factor=factor), [0, 0, 200, 90])
    tight = heatmap_box_xyxy(heatmap, fmap, threshold=1.0, factor=factor)
    peak_cell = grid_cell_xyxy((2, 3), fmap.image_hw, fmap.resized_hw, 8)
    assert peak_cell[0] <= tight[0] < tight[2] <= peak_cell[2] and peak_cell[1] <= tight[1] < tight[3] <= peak_cell[3]


def test_point_and_box_come_from_one_maximum():
    """Two near-equal objects: a lone spike (the grid's maximum) and a slightly lower 2 x 2 plateau, whose bilinear
    upsampling peaks higher than the spike's. The box must surround the object the point is on."""
    fmap = geometry_fmap()
    heatmap = torch.zeros(fmap.grid_hw)
    heatmap[1, 1] = 1.0  # object A: the grid maximum
    heatmap[3:5, 6:8] = 0.98  # object B: lower on the grid, higher once upsampled (its neighbours are high too)
    heatmap[4, 6] = 0.99
    assert float(torch.nn.functional.interpolate(heatmap[None, None], scale_factor=4, mode="bilinear").max()) > 0.95
    loc = localize_heatmap(heatmap, fmap, box_threshold=0.5)
    a_cell = grid_cell_xyxy((1, 1), fmap.image_hw, fmap.resized_hw, 8)
    b = loc.box_xyxy
    assert b[0] <= loc.point_xy[0] <= b[2] and b[1] <= loc.point_xy[1] <= b[3]
    assert a_cell[0] <= b[0] < b[2] <= a_cell[2] and a_cell[1] <= b[1] < b[3] <= a_cell[3]  # A's box, not B's
    for t in (0.0, 0.2, 0.8, 1.0):  # every threshold's box holds the point
        b = heatmap_box_xyxy(heatmap, fmap, threshold=t, peak_grid=loc.peak_grid)
        assert b[0] <= loc.point_xy[0] <= b[2] and b[1] <= loc.point_xy[1] <= b[3], t


def test_every_point_lies_in_its_box_over_a_world(tmp_path):
    """On every expression of a drawn world (shapes-tiny-v2, its calibrated settings), whichever way it is localized
    (the component box, the re-ranked components, ground-truth candidates), the point lies in the box. With the grid's
    maximum for the point and the upsampled map's for the box, 10 of this world's 113 expressions had the point
    outside its box."""
    from dense import coco
    from dense.datasets import make_shapes
    from dense.refer import BOX_THRESHOLDS

    make_shapes(tmp_path, 16, seed=6, size_range=(64, 160))
    enc = dense.load_encoder("shapes-tiny-v2")
    ds = coco.load_coco(tmp_path / "annotations.json", tmp_path / "images")
    refs = coco.load_refs(tmp_path / "refs.json", ds)
    checked, outside = 0, []
    for iid in sorted({r.image_id for r in refs}):
        loc = Localizer(enc, ds.image_path(iid))
        cands = np.stack([ds.box_xyxy(a["id"]) for a in ds.anns(iid, crowd=False)])  # [K, 4]
        for sent in [s for r in refs if r.image_id == iid for s in r.sentences]:
            for way in (loc.localize(sent), loc.localize(sent, rerank_thresholds=BOX_THRESHOLDS),
                        loc.localize(sent, candidates_xyxy=cands)):
                b, (x, y) = way.box_xyxy, way.point_xy
                checked += 1
                if not (b[0] <= x <= b[2] and b[1] <= y <= b[3]):
                    outside.append((iid, sent, way.method))
    assert checked == 3 * 113 and not outside, outside


def test_box_patch_weights_are_cell_overlaps():
    fmap = geometry_fmap()
    cell = grid_cell_xyxy((2, 3), fmap.image_hw, fmap.resized_hw, 8)
    half = cell.copy()
    half[2] = (cell[0] + cell[2]) / 2  # left half of the cell
    w = box_patch_weights(fmap, np.stack([cell, half, [50, 40, 50, 40]]))  # last: a degenerate box
    assert w.shape == (3, 6, 9)
    expect = torch.zeros(3, 6, 9)
    expect[0, 2, 3], expect[1, 2, 3] = 1.0, 0.5
    i, j = fmap.pixel_to_grid((50, 40))
    expect[2, i, j] = 1.0
    torch.testing.assert_close(w, expect, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Region pooling through the MAP head


@pytest.fixture()
def tiny_random():
    return dense.random_encoder("tiny-siglip", seed=1, dtype="fp32")


def test_region_pooling_matches_the_head(tiny_random):
    head = tiny_random.vision.head
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 5, tiny_random.hidden_size, generator=g)  # [gh, gw, D]
    with torch.inference_mode():
        full = head(tokens.reshape(1, 20, -1))[0]  # [D]: the plain MAP pooling (pooler_output)
    weights = torch.rand(3, 4, 5, generator=g)
    weights[1] = 1.0  # the whole image
    weights[2] = 1.0
    weights[2, :2] = 0.0  # the bottom half only
    batched = pool_with_weights(head, tokens, weights)  # [3, D]
    torch.testing.assert_close(batched[1], full, atol=1e-5, rtol=1e-5)
    for k in range(3):  # one call for K boxes == K calls of one box
        torch.testing.assert_close(batched[k], pool_with_weights(head, tokens, weights[k:k + 1])[0], atol=1e-5,
                                   rtol=1e-5)
    with torch.inference_mode():  # the bottom half == the head on the bottom-half tokens alone
        bottom = head(tokens[2:].reshape(1, 10, -1))[0]
    torch.testing.assert_close(batched[2], bottom, atol=1e-5, rtol=1e-5)


def averaging_head(encoder):
    """Hand-set MAP head: uniform attention (zero q, k), value and output projections identity, MLP off.

    Then the region embedding is the (overlap-weighted) mean of the tokens in the box.
    """
    head = encoder.vision.head
    D = encoder.hidden_size
    with torch.no_grad():
        head.attention.in_proj_weight.zero_()
        head.attention.in_proj_weight[2 * D:] = torch.eye(D)
        head.attention.in_proj_bias.zero_()
        head.attention.out_proj.weight.copy_(torch.eye(D))
        head.attention.out_proj.bias.zero_()
        head.mlp.fc2.weight.zero_()
        head.mlp.fc2.bias.zero_()
    return encoder


def test_box_holding_the_planted_feature_wins(tiny_random):
    enc = averaging_head(tiny_random)
    D = enc.hidden_size
    gh, gw, p = 6, 9, 8
    background, planted = torch.zeros(D), torch.zeros(D)
    background[0], planted[1] = 1.0, 1.0
    tokens = background.repeat(gh, gw, 1)  # [gh, gw, D]
    tokens[3, 6] = planted
    fmap = FeatureMap(tokens=tokens, image_hw=(90, 200), resized_hw=(gh * p, gw * p), patch_size=p)
    target = grid_cell_xyxy((3, 6), fmap.image_hw, fmap.resized_hw, p)
    tight = target + np.array([-5.0, -3.0, 5.0, 3.0])  # planted patch + a little background
    loose = np.array([0.0, 0.0, 200.0, 90.0])  # the planted patch among all background
    empty = grid_cell_xyxy((1, 1), fmap.image_hw, fmap.resized_hw, p)  # background only
    boxes = np.stack([empty, loose, tight])
    emb = region_embeddings(enc, fmap, boxes)  # [3, D]
    # by construction: mean of the tokens in the box, weighted by cell overlap
    w = box_patch_weights(fmap, boxes)
    expect = torch.nn.functional.normalize(torch.einsum("kij,ijd->kd", w, tokens) / w.sum((1, 2))[:, None], dim=-1)
    torch.testing.assert_close(emb, expect, atol=1e-5, rtol=1e-5)
    from dense.refer import calibrated_scores

    scores = calibrated_scores(enc, emb, planted)  # the "text" is the planted feature itself
    assert int(torch.argmax(scores)) == 2 and scores[2] > scores[1] > scores[0]
    heatmap = torch.zeros(gh, gw)
    heatmap[0, 0] = 1.0  # a distracting peak outside the chosen box
    heatmap[3, 6] = 0.5
    loc = localize_heatmap(heatmap, fmap, candidates_xyxy=boxes, candidate_scores=scores, scorer="map-box")
    assert loc.candidate_index == 2
    np.testing.assert_allclose(loc.box_xyxy, tight)
    assert tight[0] <= loc.point_xy[0] <= tight[2] and tight[1] <= loc.point_xy[1] <= tight[3]
    np.testing.assert_allclose(loc.point_xy, grid_to_pixel_xy((3, 6), fmap.image_hw, fmap.resized_hw, p))


# ---------------------------------------------------------------------------------------------------------------------
# The user layer on a real (tiny, random) checkpoint: compute once, query many


EXPRESSIONS = [f"the {size}{colour} {shape}{where}" for size in ("", "small ") for colour in ("red", "blue")
               for shape in ("circle", "square", "star") for where in ("", " on the left")][:20]


def test_twenty_expressions_cost_one_extraction(tiny_encoder):
    from conftest import random_rgb

    calls = []
    hook = tiny_encoder.vision.embeddings.register_forward_hook(lambda *a: calls.append(1))
    try:
        boxes = np.array([[0, 0, 40, 30], [30, 10, 90, 60], [5, 20, 60, 70.5]])
        loc = Localizer(tiny_encoder, random_rgb(72, 100, seed=3))
        plain = loc.localize_many(EXPRESSIONS)
        ranked = loc.localize_many(EXPRESSIONS, candidates_xyxy=boxes)
        fmap = tiny_encoder.extract(random_rgb(72, 100, seed=3))
        again = [localize(tiny_encoder, fmap, e) for e in EXPRESSIONS[:3]]  # a FeatureMap: no new forward
    finally:
        hook.remove()
    assert len(calls) == 2  # Localizer's extraction + the explicit one above
    assert len(plain) == len(ranked) == 20
    for a, b in zip(plain[:3], again, strict=True):
        np.testing.assert_allclose(a.point_xy, b.point_xy)
        np.testing.assert_allclose(a.box_xyxy, b.box_xyxy)
    for r in plain:
        assert r.heatmap.shape == loc.fmap.grid_hw and 0 <= r.score <= 1
        assert 0 <= r.box_xyxy[0] < r.box_xyxy[2] <= 100 and 0 <= r.box_xyxy[1] < r.box_xyxy[3] <= 72
        assert 0 <= r.point_xy[0] <= 100 and 0 <= r.point_xy[1] <= 72
    for r in ranked:
        assert r.candidate_scores.shape == (3,) and r.candidate_index == int(torch.argmax(r.candidate_scores))
        box = boxes[r.candidate_index]
        np.testing.assert_allclose(r.box_xyxy, box)
        assert box[0] <= r.point_xy[0] <= box[2] and box[1] <= r.point_xy[1] <= box[3]


# ---------------------------------------------------------------------------------------------------------------------
# dense eval refer, end to end on a small synthetic world


def test_eval_refer_end_to_end(tiny_siglip_dir, tmp_path, capsys):
    import json

    from dense import coco
    from dense.cli import main
    from dense.datasets import make_shapes

    world = tmp_path / "world"
    make_shapes(world, 6, seed=2, size_range=(64, 120), splits={"val": 1.0})
    out = tmp_path / "refer.json"
    rc = main(["eval", "refer", "--ann", str(world / "annotations.json"), "--refs", str(world / "refs.json"),
               "--images", str(world / "images"), "--split", "val", "--model", str(tiny_siglip_dir),
               "--sweep", "0.3,0.6", "--json", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "random" in text and "map-box" in text and "by relative box threshold" in text
    res = json.loads(out.read_text())
    figs, meta = res["figures"], res["meta"]
    ds = coco.load_coco(world / "annotations.json", world / "images")
    refs = coco.load_refs(world / "refs.json", ds, split="val")
    assert meta["refs_count"] == len(refs) and meta["expressions"] == sum(len(r.sentences) for r in refs)
    # the random baseline, computed independently: each ref's chance of drawing its own box (GT boxes rarely overlap
    # at IoU >= 0.5), weighted by its sentences
    n_cands = {iid: len(ds.anns(iid, crowd=False)) for iid in ds.ids()}
    chance = np.average([1 / n_cands[r.image_id] for r in refs], weights=[len(r.sentences) for r in refs])
    assert figs["gt-boxes/-/random/acc@0.5"] >= chance - 1e-9
    assert all(0.0 <= v <= 1.0 for v in figs.values())
    assert 0 < meta["expressions_multi"] <= meta["expressions"]
    multi = [r for r in refs if n_cands[r.image_id] >= 2]  # on images with >= 2 objects, chance is lower
    chance_multi = np.average([1 / n_cands[r.image_id] for r in multi], weights=[len(r.sentences) for r in multi])
    assert figs["multi/gt-boxes/-/random/acc@0.5"] >= chance_multi - 1e-9 and chance_multi < chance
    # one row per (expression, way); Acc@0.5 is the share of rows with IoU >= 0.5
    method = meta["methods"][0]
    rows = [r for r in res["rows"] if r["way"] == f"none/{method}/-"]
    assert len(rows) == meta["expressions"]
    assert figs[f"none/{method}/-/acc@0.5"] == pytest.approx(np.mean([r["iou"] >= 0.5 for r in rows]))
    # the sweep holds every threshold asked for
    assert {k for k in figs if "@thr=" in k and not k.startswith("multi/")} == {
        f"none/{method}/-/acc@0.5@thr=0.3", f"none/{method}/-/acc@0.5@thr=0.6"}


# ---------------------------------------------------------------------------------------------------------------------
# probes/refer_head.py: a trained light head must learn a task whose answer is planted in the tokens


# the spec of the planted features: one block of 16 channels, at a token budget of 64, in float32
PLANTED_SPEC = dict(fingerprint="planted", rules=RULES_VERSION, family="siglip", patch_size=8, hidden_size=16,
                    num_layers=1, max_patches=64, layers=[0], dtype="float32")


def planted_samples(n: int, seed: int):
    """Each image: 2-3 objects, each a 2x2 block of patches holding its class vector (+ noise); the text is the
    target's class vector; the target box is the block's cells. Grids and image sizes vary."""
    from probes.refer_head import ReferSample

    rng = np.random.default_rng(seed)
    D, C = 16, 4
    classes = torch.eye(C, D)
    out = []
    for _ in range(n):
        gh, gw, p = int(rng.integers(5, 8)), int(rng.integers(5, 9)), 8
        image_hw = (int(rng.integers(60, 200)), int(rng.integers(60, 200)))
        tokens = torch.from_numpy(rng.normal(0, 0.3, (gh, gw, D))).float()
        fmap0 = FeatureMap(tokens=tokens, image_hw=image_hw, resized_hw=(gh * p, gw * p), patch_size=p,
                           encoder_spec=PLANTED_SPEC)
        cells = rng.permutation([(i, j) for i in range(0, gh - 1, 2) for j in range(0, gw - 1, 2)])[:3]
        cls = rng.permutation(C)[:len(cells)]
        for (i, j), c in zip(cells, cls, strict=True):
            tokens[i:i + 2, j:j + 2] += 2 * classes[c]
        i, j = cells[0]
        box = np.concatenate([grid_cell_xyxy((i, j), image_hw, fmap0.resized_hw, p)[:2],
                              grid_cell_xyxy((i + 1, j + 1), image_hw, fmap0.resized_hw, p)[2:]])
        out.append(ReferSample(fmap0, classes[cls[0]], box))
    return out


def test_refer_head_learns_a_planted_task(tmp_path):
    from dense import metrics
    from dense.errors import MismatchError
    from dense.eval.refer import evaluate_refer_head
    from probes.refer_head import ReferHead, train_refer_head

    train, test = planted_samples(200, seed=0), planted_samples(60, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a shared machine
    try:
        head = train_refer_head(train, steps=200, batch_size=32, hidden=64, seed=0)
    finally:
        torch.set_num_threads(threads)
    masks = []
    for s in test:
        m = np.zeros(s.fmap.image_hw, bool)
        x0, y0, x1, y1 = s.box_xyxy
        m[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)] = True
        masks.append(m)
    res = evaluate_refer_head(head, test, masks).figures
    assert res["pointing"] >= 0.9, res
    assert res["acc@0.5"] >= 0.6, res
    answers = [head.predict(s.fmap, s.text) for s in test]
    pred = np.stack([a["box_xyxy"][0] for a in answers])
    for a in answers:  # the point lies in the box the head regressed (its peak among the box's patches)
        (x0, y0, x1, y1), (x, y) = a["box_xyxy"][0], a["point_xy"][0]
        assert x0 <= x <= x1 and y0 <= y <= y1, a
    assert np.median(np.diag(metrics.box_iou_xyxy(pred, np.stack([s.box_xyxy for s in test])))) >= 0.5
    # save / load round trip (one .safetensors file); the identity rule of probes: another dtype or token budget is
    # the same encoder, another checkpoint is refused when loading and when predicting
    path = head.save(tmp_path / "head.safetensors")
    again = ReferHead.load(path, encoder=dict(PLANTED_SPEC, dtype="bfloat16", max_patches=256))
    np.testing.assert_allclose(again.predict(test[0].fmap, test[0].text)["box_xyxy"],
                               head.predict(test[0].fmap, test[0].text)["box_xyxy"], atol=1e-6)
    with pytest.raises(MismatchError, match="head.safetensors.*trained on another encoder.*fingerprint"):
        ReferHead.load(path, encoder=dict(PLANTED_SPEC, fingerprint="other"))
    other = replace(test[0].fmap, encoder_spec=dict(PLANTED_SPEC, fingerprint="other"))
    with pytest.raises(MismatchError, match="fingerprint"):
        again.predict(other, test[0].text)
    # files that are not a referring head: a probe, a torch pickle
    torch.save({"state": head.state_dict()}, tmp_path / "head.pt")
    with pytest.raises(ValueError, match=r"head\.pt: not a dense referring head file"):
        ReferHead.load(tmp_path / "head.pt")
    from probes import LinearProbe

    LinearProbe(16, ["a", "b"], encoder_spec=PLANTED_SPEC).save(tmp_path / "probe.safetensors")
    with pytest.raises(ValueError, match="unknown referring head format 'dense.LinearProbe'"):
        ReferHead.load(tmp_path / "probe.safetensors")


def test_crop_scorer_reencodes_the_box(tiny_encoder):
    from conftest import random_rgb

    from dense.openvocab import embed_images
    from dense.refer import crop_embeddings

    rgb = random_rgb(72, 100, seed=4)
    boxes = np.array([[0, 0, 100, 72], [10.4, 20.6, 50.2, 60.9]])  # the whole image; a box at sub-pixel coordinates
    emb = crop_embeddings(tiny_encoder, rgb, boxes)
    torch.testing.assert_close(emb[0], embed_images(tiny_encoder, rgb)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1], embed_images(tiny_encoder, rgb[20:61, 10:51])[0], atol=1e-5, rtol=1e-5)
    loc = Localizer(tiny_encoder, rgb, features=tiny_encoder.extract(rgb))
    r = loc.localize("the red circle", candidates_xyxy=boxes, scorer="crop")
    assert r.method.endswith("+crop") and r.candidate_scores.shape == (2,)
    with pytest.raises(ValueError, match="pass the image as image="):
        Localizer(tiny_encoder, tiny_encoder.extract(rgb)).localize("the red circle", candidates_xyxy=boxes,
                                                                     scorer="crop")


def test_localizer_reads_a_path_and_reuses_given_features(tiny_encoder, tmp_path):
    """A path is read through load_image; with features= the FeatureMap is used as is (no extraction), and the
    answers equal those of the array with its own extraction."""
    from conftest import random_rgb
    from PIL import Image

    rgb = random_rgb(40, 56, seed=9)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    fmap = tiny_encoder.extract(rgb)
    want = localize(tiny_encoder, rgb, "the red circle")
    for kw in ({"image": path}, {"image": str(path), "features": fmap}):
        got = localize(tiny_encoder, expression="the red circle", **kw)
        np.testing.assert_allclose(got.box_xyxy, want.box_xyxy)
        torch.testing.assert_close(got.heatmap, want.heatmap)
    with pytest.raises(ValueError, match="features="):
        Localizer(tiny_encoder, rgb[:20], features=fmap)  # the FeatureMap of another image size
    with pytest.raises(ValueError, match="features= is given too"):
        Localizer(tiny_encoder, fmap, features=fmap)


def test_component_reranking_picks_the_tightest_box_around_a_planted_object(tiny_random):
    """Known answer: with an averaging head, a box's score grows with the share of planted patches it holds, so among
    the heatmap's component boxes at several thresholds the tightest one around the planted block must win."""
    from dense.text import put_cache

    enc = averaging_head(tiny_random)
    D = enc.hidden_size
    gh, gw, p = 8, 10, 8
    background, planted = torch.zeros(D), torch.zeros(D)
    background[0], planted[1] = 1.0, 1.0
    tokens = background.repeat(gh, gw, 1)  # [gh, gw, D]
    tokens[3:5, 5:7] = planted  # a 2 x 2 object
    fmap = FeatureMap(tokens=tokens, image_hw=(64, 80), resized_hw=(gh * p, gw * p), patch_size=p,
                      encoder_spec=enc.spec())
    ii, jj = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")
    heatmap = torch.exp(-((ii - 3.5) ** 2 + (jj - 5.5) ** 2) / 8)  # [gh, gw]: a broad bump over the object
    put_cache(enc, ["the planted one"], planted[None], templates=("{}",))  # the text IS the planted feature
    loc = Localizer(enc, fmap)
    loc._heatmaps["the planted one"] = heatmap
    thresholds = (0.2, 0.5, 0.8)
    boxes = {t: heatmap_box_xyxy(heatmap, fmap, threshold=t) for t in thresholds}
    area = {t: (b[2] - b[0]) * (b[3] - b[1]) for t, b in boxes.items()}
    assert area[0.2] > area[0.5] > area[0.8]  # the proposals differ
    r = loc.localize("the planted one", rerank_thresholds=thresholds)
    np.testing.assert_allclose(r.box_xyxy, boxes[0.8])
    plain = loc.localize("the planted one", box_threshold=0.2)
    np.testing.assert_allclose(plain.box_xyxy, boxes[0.2])
    np.testing.assert_allclose(r.point_xy, plain.point_xy)  # the point is the heatmap's, whatever the box
    assert r.method.endswith("+components-map-box") and r.score == pytest.approx(float(r.candidate_scores.max()))


# ---------------------------------------------------------------------------------------------------------------------
# Found / not found


def test_below_the_found_threshold_the_answer_is_not_found():
    fmap = geometry_fmap()
    heatmap = torch.zeros(fmap.grid_hw)
    heatmap[2, 7] = 0.05  # "yellow triangle" on a red square: the peak is tiny
    faint = localize_heatmap(heatmap, fmap, expression="the yellow triangle", found_threshold=0.09)
    assert faint.found is False and faint.score == pytest.approx(0.05)
    assert faint.box_xyxy.shape == (4,)  # the best guess is still there, for evaluations
    assert localize_heatmap(heatmap, fmap, found_threshold=0.05).found  # at the threshold: found
    assert localize_heatmap(heatmap, fmap).found  # the neutral default (0) never says "not found"
    ranked = localize_heatmap(heatmap, fmap, candidates_xyxy=[[0, 0, 50, 40], [100, 10, 190, 80]],
                              candidate_scores=torch.tensor([0.02, 0.04]), scorer="map-box", found_threshold=0.09)
    assert ranked.found is False and ranked.candidate_index == 1
    with pytest.raises(ValueError, match="found_threshold"):
        localize_heatmap(heatmap, fmap, found_threshold=1.5)


def test_localization_repr_is_short():
    fmap = geometry_fmap(gh=40, gw=60)
    loc = localize_heatmap(torch.rand(40, 60), fmap, expression="the green star", found_threshold=0.99)
    text = repr(loc)
    assert "tensor" not in text and len(text) < 200
    assert text.startswith("Localization('the green star'") and "box_xyxy=[" in text and "point_xy=[" in text
    assert f"score={loc.score:.3f}" in text and f"found={loc.found}" in text


def test_found_threshold_comes_from_the_calibration(tiny_siglip_dir):
    from conftest import random_rgb

    from dense.errors import CheckpointError

    image = random_rgb(40, 56, seed=5)
    strict = dense.load_encoder(tiny_siglip_dir, calibration={"found_threshold": 1.0})
    neutral = dense.load_encoder(tiny_siglip_dir)
    assert neutral.calibration.found_threshold == 0.0
    assert Localizer(strict, image).localize("red circle").found is False  # a sigmoid never reaches 1
    assert Localizer(neutral, image).localize("red circle").found is True
    assert Localizer(strict, image).localize("red circle", found_threshold=0.0).found is True  # given wins
    with pytest.raises(CheckpointError, match="found_threshold is a probability"):
        dense.load_encoder(tiny_siglip_dir, calibration={"found_threshold": 1.5})
    loc = Localizer(neutral, image)
    with pytest.raises(ValueError, match="found_threshold"):
        loc.localize("red circle", found_threshold=-0.1)
    assert not loc._heatmaps  # refused before any text was embedded


@pytest.mark.parametrize("name", ["shapes-tiny", "shapes-tiny-v2"])
def test_bundled_models_carry_a_measured_found_threshold(name):
    import json
    from pathlib import Path

    enc_cal = dense.load_encoder(name).calibration
    on_disk = json.loads(Path(enc_cal.source).read_text())
    assert 0.0 < enc_cal.found_threshold == on_disk["found_threshold"] < 0.5
    measured = on_disk["measured"]["found_threshold"]
    assert measured["command"].startswith("python scripts/measure_found_threshold.py")
    chose, told = measured["chosen_on"], measured["reported_on"]
    assert chose["seed"] != told["seed"] and (chose["split"], told["split"]) == ("val", "test")
    assert told["found|present"] > 0.7 and told["not_found|absent"] > 0.7  # absent mostly not found, present found
    at = measured["at_threshold"]  # the rates per kind of absence, at the threshold in force
    assert at["threshold"] == enc_cal.found_threshold and f"--threshold {at['threshold']} " in at["command"]
    assert at["reported_on"]["not_found|absent"] == pytest.approx(told["not_found|absent"], abs=0.01)  # one world
    kinds = at["reported_on"]["absent_by_kind"]
    assert set(kinds) == {"colour", "shape", "colour+shape", "neither"} and sum(kinds.values()) == told["absent"]


def test_found_threshold_choice_and_rates_known_by_construction():
    from dense.eval import Result
    from dense.eval.found import choose_found_threshold, rates_at

    rows = [{"present": True, "score": s} for s in (0.5, 0.6, 0.04)] + \
           [{"present": False, "score": s} for s in (0.01, 0.02, 0.3)]
    res = Result(figures={}, rows=rows)
    # 0.03 (3/3 found, 2/3 not found) ties 0.31..0.50 (2/3, 3/3) for the best balanced rate: the lower one wins
    assert choose_found_threshold(res) == 0.03
    assert rates_at(res, 0.03) == pytest.approx({"found|present": 1.0, "not_found|absent": 2 / 3,
                                                 "balanced": 5 / 6})
    assert rates_at(res, 0.05)["balanced"] == pytest.approx(2 / 3)
    assert rates_at(res, 0.55)["found|present"] == pytest.approx(1 / 3)


def test_not_found_rates_per_kind_of_absence_known_by_construction():
    from dense.eval import Result
    from dense.eval.found import absence_kind, rates_at

    there = {("red", "square"), ("blue", "star")}
    assert absence_kind("red", "circle", there) == "colour"  # red is there (a square), circles are not
    assert absence_kind("green", "star", there) == "shape"
    assert absence_kind("red", "star", there) == "colour+shape"  # red on the square, a star in blue
    assert absence_kind("yellow", "circle", there) == "neither"
    absent = (("colour", 0.6), ("colour", 0.01), ("neither", 0.02), ("neither", 0.0))
    rows = [{"present": True, "score": 0.9}] + [{"present": False, "absence": k, "score": v} for k, v in absent]
    rates = rates_at(Result(figures={}, rows=rows), 0.1)
    assert rates["not_found|absent"] == pytest.approx(3 / 4)
    assert rates["not_found|absent/colour"] == pytest.approx(1 / 2) and rates["not_found|absent/neither"] == 1.0
    assert "not_found|absent/shape" not in rates  # no such row: no figure


def test_evaluate_found_counts_present_and_absent_expressions(tiny_encoder, tmp_path):
    import json

    from dense import datasets
    from dense.eval.found import evaluate_found

    datasets.make_shapes(tmp_path, 4, seed=3, splits={"val": 1.0})
    ann = json.loads((tmp_path / "annotations.json").read_text())
    refs = json.loads((tmp_path / "refs.json").read_text())
    from dense.eval.data import open_data
    from dense.eval.settings import Bootstrap

    data = open_data(ann=tmp_path / "annotations.json", images=tmp_path / "images", refs=tmp_path / "refs.json")
    res = evaluate_found(tiny_encoder, data, split="val", threshold=0.5, bootstrap=Bootstrap(resamples=20))
    iids = sorted({r["image_id"] for r in refs})
    n_present = sum(len(r["sentences"]) for r in refs)
    n_absent = sum(16 - len({a["category_id"] for a in ann["annotations"] if a["image_id"] == i}) for i in iids)
    assert (res.meta["present"], res.meta["absent"]) == (n_present, n_absent)
    present = [r["score"] for r in res.rows if r["present"]]
    assert res.figures["found|present"] == pytest.approx(np.mean(np.array(present) >= 0.5))
    assert all(r["expression"].startswith("the ") for r in res.rows if not r["present"])
    # each absent expression's kind, from the annotations: its colour / its shape anywhere in the image
    kinds = {}
    for i in iids:
        names = {c["name"] for a in ann["annotations"] if a["image_id"] == i for c in ann["categories"]
                 if c["id"] == a["category_id"]}
        for c in ann["categories"]:
            if c["name"] not in names:
                colour, shape = c["name"].split()
                held = (any(n.split()[0] == colour for n in names), any(n.split()[1] == shape for n in names))
                key = {(True, True): "colour+shape", (True, False): "colour", (False, True): "shape",
                       (False, False): "neither"}[held]
                kinds[key] = kinds.get(key, 0) + 1
    assert res.meta["absent_by_kind"] == kinds and sum(kinds.values()) == n_absent
    for k, n in kinds.items():
        scores = [r["score"] for r in res.rows if r.get("absence") == k]
        assert len(scores) == n and res.figures[f"not_found|absent/{k}"] == pytest.approx(np.mean(np.array(scores)
                                                                                                  < 0.5))
    with pytest.raises(ValueError, match="no referring expressions in split 'test'"):
        evaluate_found(tiny_encoder, data, split="test")

"""Referring-expression localization: an expression -> ``box_xyxy`` and ``point_xy`` in original-image pixels.

Two ways, both reading one :class:`~dense.FeatureMap` (compute once, query many):

- **Without candidates** (``candidates_xyxy=None``): the expression's dense heatmap ``[gh, gw]``
  (:func:`dense.heatmap.patch_scores`, sigmoid probabilities) gives

  - the point: the peak patch, refined below the patch size by a quadratic fit along each axis through the peak and its
    two neighbours (:func:`refine_peak_grid`), mapped to pixels by :func:`dense.preprocess.grid_to_pixel_xy`;
  - the box: the heatmap is upsampled ``box_upsample`` times (bilinear, ``align_corners=False`` so sample centres stay
    where the geometry says), thresholded at ``min + box_threshold * (max - min)`` (a RELATIVE threshold in [0, 1]),
    and the 8-connected component (OpenCV) holding the maximum becomes the box (:func:`heatmap_box_xyxy`). The default
    ``box_threshold=0.3`` was chosen on the synthetic val split (``DEFAULT_BOX_THRESHOLD``); ``dense eval refer``
    sweeps it.

- **With candidate boxes** (ground-truth boxes, or a detector's proposals): each box is scored against the expression
  and the best one wins. Scorers (``CANDIDATE_METHODS``):

  - ``"map-box"`` (default): the checkpoint's own MAP pooling head, its attention restricted to the box
    (:func:`region_embeddings`): patch keys are weighted by the fraction of the patch's cell inside the box (an additive
    ``log(fraction)`` attention mask, ``-inf`` outside), so the pooled vector is the image embedding the model would
    give "this region only". All boxes go through the head in ONE call (the box index is the query axis of
    ``nn.MultiheadAttention``, so keys and values are projected once). Compared with the text embedding through the
    checkpoint's ``logit_scale`` / ``logit_bias`` -> a sigmoid probability per box.
  - ``"heatmap-mean"``: the mean heatmap score over the box's patches (overlap-weighted), a cheap baseline.
  - ``"crop"``: ReCLIP-style crop re-encoding: each box is cut out of the image, re-encoded and MAP-pooled (one
    extraction per box; needs the image, not just a FeatureMap).

  The point is then the refined heatmap peak among the patches the chosen box covers, clipped into the box. (On the
  synthetic shapes, all convex, the box centre lands in the mask more often; ``dense eval refer`` reports both. The
  peak is kept because it follows the object in a box it does not fill.)

:class:`Localizer` holds one image's FeatureMap and caches heatmaps per expression, so localizing 20 expressions costs
one extraction plus 20 cheap head passes; :func:`localize` is the one-call form (pass a FeatureMap to reuse one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dense._atomic import write_json
from dense.features import FeatureMap
from dense.preprocess import ImageInput, grid_cell_xyxy, grid_to_pixel_xy, load_image

CANDIDATE_METHODS = ("map-box", "heatmap-mean", "crop")
DEFAULT_CANDIDATE_METHOD = "map-box"
# Relative, in [0, 1] of the heatmap's (max - min) range. Chosen on the synthetic world's val split with shapes-tiny
# (map-value-mlp Acc@0.5: 0.286 / 0.289 / 0.258 / 0.137 at 0.2 / 0.3 / 0.4 / 0.5); sweep it for a new checkpoint.
DEFAULT_BOX_THRESHOLD = 0.3
DEFAULT_BOX_UPSAMPLE = 4  # heatmap cells per patch side when the component is cut
REFINE = ("quadratic", "none")


@dataclass(frozen=True, eq=False)
class Localization:
    """Where an expression points in one image.

    Attributes:
        box_xyxy: float64 ``[4]`` in original-image pixels.
        point_xy: float64 ``[2]`` in original-image pixels.
        score: sigmoid probability of the answer: the heatmap peak (no candidates) or the chosen box's score.
        heatmap: ``[gh, gw]`` sigmoid patch scores of the expression (what the point came from).
        peak_grid: float64 ``[2]``: the refined peak as fractional patch ``(i, j)``.
        expression: the query.
        method: the heatmap method, and the candidate scorer after a ``+`` when candidates were given.
        candidate_scores: ``[K]`` scores of the candidate boxes (None without candidates).
        candidate_index: index of the chosen candidate (None without candidates).
    """

    box_xyxy: np.ndarray
    point_xy: np.ndarray
    score: float
    heatmap: torch.Tensor
    peak_grid: np.ndarray
    expression: str = ""
    method: str = ""
    candidate_scores: torch.Tensor | None = None
    candidate_index: int | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Heatmap -> point and box (no text, no model: pure geometry on a score map)


def _check_heatmap(heatmap: torch.Tensor, fmap: FeatureMap) -> torch.Tensor:
    heatmap = torch.as_tensor(heatmap, dtype=torch.float32)
    if heatmap.ndim != 2 or tuple(heatmap.shape) != fmap.grid_hw:
        raise ValueError(f"heatmap {tuple(heatmap.shape)} does not match the FeatureMap grid {fmap.grid_hw}")
    return heatmap


def refine_peak_grid(heatmap: torch.Tensor, *, allowed: torch.Tensor | None = None,
                     refine: str = "quadratic") -> np.ndarray:
    """The heatmap's peak as a fractional patch ``(i, j)``: float64 ``[2]``.

    ``heatmap``: ``[gh, gw]``. ``allowed``: optional bool ``[gh, gw]``; the peak is searched among allowed patches only
    (all, when none is allowed). ``refine``: ``"quadratic"`` fits a parabola through the peak and its two neighbours
    along each axis (exact for a quadratic peak; the offset is clipped to half a patch and dropped at the border or
    where the three values are not concave); ``"none"`` returns the patch centre.
    """
    if refine not in REFINE:
        raise ValueError(f"refine must be one of {REFINE}, got {refine!r}")
    s = torch.as_tensor(heatmap, dtype=torch.float64)
    gh, gw = s.shape
    search = s if allowed is None or not bool(allowed.any()) else s.masked_fill(~allowed.bool(), float("-inf"))
    flat = int(torch.argmax(search))
    i, j = divmod(flat, gw)
    peak = np.array([i, j], dtype=np.float64)
    if refine == "none":
        return peak
    for axis, (pos, size) in enumerate(((i, gh), (j, gw))):
        if pos == 0 or pos == size - 1:
            continue
        if axis == 0:
            lo, mid, hi = float(s[i - 1, j]), float(s[i, j]), float(s[i + 1, j])
        else:
            lo, mid, hi = float(s[i, j - 1]), float(s[i, j]), float(s[i, j + 1])
        curvature = lo - 2.0 * mid + hi
        if curvature < 0:  # concave: a real maximum
            peak[axis] += float(np.clip(0.5 * (lo - hi) / curvature, -0.5, 0.5))
    return peak


def heatmap_box_xyxy(heatmap: torch.Tensor, fmap: FeatureMap, *, threshold: float = DEFAULT_BOX_THRESHOLD,
                     upsample: int = DEFAULT_BOX_UPSAMPLE) -> np.ndarray:
    """The box of the connected component around the heatmap's maximum: float64 ``[4]`` xyxy, original pixels.

    The ``[gh, gw]`` heatmap is upsampled ``upsample`` times (bilinear, ``align_corners=False``), kept where it is at
    least ``min + threshold * (max - min)``, and split into 8-connected components
    (``cv2.connectedComponentsWithStats``); the component holding the upsampled maximum gives the box. Fine cell ``a``
    spans patch coordinates
    ``[a / upsample - 0.5, (a + 1) / upsample - 0.5]``, mapped to pixels by :func:`grid_to_pixel_xy`.
    """
    import cv2
    import torch.nn.functional as F

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is relative and must lie in [0, 1], got {threshold}")
    if upsample < 1:
        raise ValueError(f"upsample must be >= 1, got {upsample}")
    s = _check_heatmap(heatmap, fmap)
    k = int(upsample)
    fine = F.interpolate(s[None, None], scale_factor=k, mode="bilinear", align_corners=False)[0, 0]  # [gh*k, gw*k]
    lo, hi = float(fine.min()), float(fine.max())
    keep = (fine >= lo + threshold * (hi - lo)).numpy().astype(np.uint8)  # [gh*k, gw*k]
    _, labels, stats, _ = cv2.connectedComponentsWithStats(keep, connectivity=8)
    a, b = divmod(int(torch.argmax(fine)), fine.shape[1])  # the maximum: always kept (threshold <= 1)
    x, y, w, h = (int(v) for v in stats[labels[a, b], :4])  # fine columns [x, x+w), rows [y, y+h)
    corners_ij = np.array([[y / k - 0.5, x / k - 0.5], [(y + h) / k - 0.5, (x + w) / k - 0.5]])  # [2, (i, j)]
    corners_xy = grid_to_pixel_xy(corners_ij, fmap.image_hw, fmap.resized_hw, fmap.patch_size)  # [2, (x, y)]
    return corners_xy.reshape(4)  # [[x0, y0], [x1, y1]] -> [x0, y0, x1, y1]


def box_patch_weights(fmap: FeatureMap, boxes_xyxy) -> torch.Tensor:
    """The fraction of each patch's cell inside each box: float32 ``[K, gh, gw]`` in [0, 1].

    Cells come from :func:`dense.preprocess.grid_cell_xyxy`. A box that covers no cell at all (degenerate, or outside
    the image) gets the single patch holding its clipped centre, so every box pools something.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
    gh, gw = fmap.grid_hw
    ii, jj = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    cells = grid_cell_xyxy(np.stack([ii, jj], axis=-1), fmap.image_hw, fmap.resized_hw, fmap.patch_size)  # [gh,gw,4]
    b = boxes[:, None, None, :]  # [K, 4] -> [K, 1, 1, 4]
    iw = np.clip(np.minimum(b[..., 2], cells[..., 2]) - np.maximum(b[..., 0], cells[..., 0]), 0, None)  # [K, gh, gw]
    ih = np.clip(np.minimum(b[..., 3], cells[..., 3]) - np.maximum(b[..., 1], cells[..., 1]), 0, None)
    area = (cells[..., 2] - cells[..., 0]) * (cells[..., 3] - cells[..., 1])  # [gh, gw]
    frac = iw * ih / area
    H, W = fmap.image_hw
    for k in np.flatnonzero(frac.reshape(len(boxes), -1).max(axis=1) <= 0):
        cx = np.clip((boxes[k, 0] + boxes[k, 2]) / 2, 0, W - 1e-6)
        cy = np.clip((boxes[k, 1] + boxes[k, 3]) / 2, 0, H - 1e-6)
        i, j = fmap.pixel_to_grid((cx, cy))
        frac[k, i, j] = 1.0
    return torch.from_numpy(frac).float()


# ---------------------------------------------------------------------------------------------------------------------
# Boxes -> region embeddings (the MAP head, restricted to each box)


def _last_block_tokens(encoder, fmap: FeatureMap) -> torch.Tensor:
    """The last block's tokens ``[gh, gw, D]`` (what the MAP head reads) out of a possibly multi-layer FeatureMap."""
    last = encoder.num_layers - 1
    D = encoder.hidden_size
    layers = [layer % encoder.num_layers for layer in fmap.layers]
    if last not in layers or fmap.dim != D * len(layers):
        raise ValueError(f"the FeatureMap holds layers {fmap.layers} (dim {fmap.dim}); region pooling needs the last "
                         f"block's tokens (layers=(-1,)) of this encoder (hidden {D})")
    return fmap.layer_tokens([fmap.layers[layers.index(last)]])  # the index as the FeatureMap stores it


@torch.inference_mode()
def pool_with_weights(head: torch.nn.Module, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The MAP head with its attention restricted by per-region patch weights: ``[K, E]`` (not normalized).

    ``head``: a SigLIP ``MultiheadAttentionPoolingHead`` (``probe``, ``attention``, ``layernorm``, ``mlp``).
    ``tokens``: ``[gh, gw, D]`` last-block tokens. ``weights``: ``[K, gh, gw]`` in [0, 1] (0 = not attended).
    The K regions are K queries (all equal to the probe) of ONE ``nn.MultiheadAttention`` call over the same keys,
    with the additive mask ``log(weight)`` (``[K, N]``, broadcast over heads), then ``h + mlp(layernorm(h))`` as in
    transformers. A region of all-ones weights gives exactly the head's output on the whole image.
    """
    gh, gw, D = tokens.shape
    K = weights.shape[0]
    p = next(head.parameters())
    x = tokens.reshape(1, gh * gw, D).to(p.device, p.dtype)  # [gh, gw, D] -> [1, N, D]
    w = weights.reshape(K, gh * gw).to(p.device, torch.float32)  # [K, gh, gw] -> [K, N]
    if bool((w.max(dim=1).values <= 0).any()):
        raise ValueError("every region needs at least one patch with a positive weight")
    mask = torch.log(w.clamp(min=0)).to(p.dtype)  # [K, N]: 0 inside, log(frac) on the border, -inf outside
    probe = head.probe.expand(1, K, D)  # [1, 1, D] -> [1, K, D]
    h = head.attention(probe, x, x, attn_mask=mask, need_weights=False)[0]  # [1, K, D]
    h = h + head.mlp(head.layernorm(h))
    return h[0].float().cpu()  # [1, K, D] -> [K, D]


def region_embeddings(encoder, fmap: FeatureMap, boxes_xyxy) -> torch.Tensor:
    """Unit-normalized MAP embeddings of boxes (original-image pixels): ``[K, E]``, one head pass for all boxes."""
    weights = box_patch_weights(fmap, boxes_xyxy)  # [K, gh, gw]
    emb = pool_with_weights(encoder.vision.head, _last_block_tokens(encoder, fmap), weights)  # [K, E]
    return torch.nn.functional.normalize(emb, dim=-1)


def crop_embeddings(encoder, image: ImageInput, boxes_xyxy, *, context: float = 0.0,
                    max_patches: int | None = None) -> torch.Tensor:
    """ReCLIP-style: cut each box out of the image (grown by ``context`` x its size per side), re-encode it at its
    native aspect ratio and MAP-pool it: unit-normalized ``[K, E]``. One extraction per box (batched by grid)."""
    rgb = load_image(image)
    H, W = rgb.shape[:2]
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
    crops = []
    for x0, y0, x1, y1 in boxes:
        dx, dy = context * (x1 - x0), context * (y1 - y0)
        c0, r0 = int(np.clip(np.floor(x0 - dx), 0, W - 1)), int(np.clip(np.floor(y0 - dy), 0, H - 1))
        c1, r1 = int(np.clip(np.ceil(x1 + dx), c0 + 1, W)), int(np.clip(np.ceil(y1 + dy), r0 + 1, H))
        crops.append(rgb[r0:r1, c0:c1])
    if not crops:
        return torch.zeros(0, encoder.hidden_size)
    fmaps = list(encoder.extract_many(crops, max_patches=max_patches, progress=False))  # batched by grid
    return _heatmap_module().embed_images(encoder, fmaps)  # [K, E], unit


def calibrated_scores(encoder, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities with the checkpoint's ``logit_scale`` / ``logit_bias``: ``[K, E] x [E] -> [K]``."""
    return torch.sigmoid(_heatmap_module().logits(encoder, image_emb, text_emb.reshape(1, -1))[0])  # [1, K] -> [K]


# ---------------------------------------------------------------------------------------------------------------------
# The user layer


def _heatmap_module():
    import dense.heatmap

    return dense.heatmap


class Localizer:
    """One image, many expressions: extract once, cache text embeddings and heatmaps.

        >>> loc = Localizer(enc, "photo.jpg")            # one extraction
        >>> loc.localize("the dog on the left")          # Localization
        >>> loc.localize("the red mug", candidates_xyxy=boxes)

    ``image_or_featuremap``: a path / PIL image / uint8 array (extracted here), or a :class:`FeatureMap` made by the
    same encoder with the layers the method needs (``dense.heatmap.required_layers``; ``(-1,)`` for the default), then
    ``image=`` is needed only for the ``"crop"`` scorer.
    ``method``: the heatmap method of :func:`dense.heatmap.patch_scores` (None = its default).
    """

    def __init__(self, encoder, image_or_featuremap: ImageInput | FeatureMap, *, method: str | None = None,
                 templates: Sequence[str] | None = None, max_patches: int | None = None,
                 image: ImageInput | None = None):
        hm = _heatmap_module()
        self.encoder = encoder
        self.templates = templates
        self.max_patches = max_patches
        self.method = method if method is not None else hm.DEFAULT_METHOD
        if isinstance(image_or_featuremap, FeatureMap):
            self.rgb = None if image is None else load_image(image)
            self.fmap = hm.with_aligned(encoder, image_or_featuremap, self.method)  # aligned tokens computed once
        else:
            self.rgb = load_image(image_or_featuremap)
            # one extraction, with the layers the method needs
            self.fmap = hm.with_aligned(encoder, self.rgb, self.method, max_patches=max_patches)
        self._heatmaps: dict[str, torch.Tensor] = {}
        self._regions: dict[tuple[str, bytes], torch.Tensor] = {}  # (scorer, boxes) -> [K, E]

    def text_embeddings(self, expressions: Sequence[str]) -> torch.Tensor:
        """``[T, E]`` unit-normalized (cached by :func:`dense.text.embed_texts`)."""
        from dense.text import embed_texts

        return embed_texts(self.encoder, list(expressions), templates=self.templates)

    def heatmaps(self, expressions: Sequence[str]) -> torch.Tensor:
        """``[T, gh, gw]`` sigmoid patch scores; the missing ones are computed in one call, then cached."""
        missing = [e for e in dict.fromkeys(expressions) if e not in self._heatmaps]
        if missing:
            scores = _heatmap_module().patch_scores(self.encoder, self.fmap, missing, method=self.method,
                                                    templates=self.templates)  # [M, gh, gw]
            self._heatmaps.update(zip(missing, scores.float(), strict=True))
        if not expressions:
            return torch.zeros(0, *self.fmap.grid_hw)
        return torch.stack([self._heatmaps[e] for e in expressions])

    def candidate_scores(self, expression: str, candidates_xyxy, *, scorer: str = DEFAULT_CANDIDATE_METHOD,
                         heatmap: torch.Tensor | None = None) -> torch.Tensor:
        """``[K]`` scores of candidate boxes for one expression (see ``CANDIDATE_METHODS``)."""
        if scorer not in CANDIDATE_METHODS:
            raise ValueError(f"unknown candidate scorer {scorer!r}; choose one of {CANDIDATE_METHODS}")
        boxes = np.asarray(candidates_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
        if scorer == "heatmap-mean":
            heatmap = self.heatmaps([expression])[0] if heatmap is None else heatmap
            w = box_patch_weights(self.fmap, boxes)  # [K, gh, gw]
            return (w * heatmap).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
        key = (scorer, boxes.tobytes())
        emb = self._regions.get(key)
        if emb is None and scorer == "crop":
            if self.rgb is None:
                raise ValueError("the 'crop' scorer re-encodes the image: pass image= with a FeatureMap")
            emb = self._regions[key] = crop_embeddings(self.encoder, self.rgb, boxes, max_patches=self.max_patches)
        elif emb is None:
            emb = self._regions[key] = region_embeddings(self.encoder, self.fmap, boxes)  # [K, E], one head pass
        return calibrated_scores(self.encoder, emb, self.text_embeddings([expression])[0])

    def localize(self, expression: str, *, candidates_xyxy=None, scorer: str = DEFAULT_CANDIDATE_METHOD,
                 box_threshold: float = DEFAULT_BOX_THRESHOLD, box_upsample: int = DEFAULT_BOX_UPSAMPLE,
                 refine: str = "quadratic", rerank_thresholds: Sequence[float] | None = None) -> Localization:
        """One expression -> :class:`Localization` (see the module docstring for the rules).

        ``rerank_thresholds`` (only without candidates): instead of the one component at ``box_threshold``, take the
        component boxes at each of these thresholds as the expression's own proposals and keep the one ``scorer``
        ranks best (the point stays the heatmap peak).
        """
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a string, got {type(expression).__name__}; use localize_many")
        heatmap = self.heatmaps([expression])[0]  # [gh, gw]
        common = dict(expression=expression, method=self.method, box_threshold=box_threshold,
                      box_upsample=box_upsample, refine=refine)
        if candidates_xyxy is not None:
            scores = self.candidate_scores(expression, candidates_xyxy, scorer=scorer, heatmap=heatmap)  # [K]
            return localize_heatmap(heatmap, self.fmap, candidates_xyxy=candidates_xyxy, candidate_scores=scores,
                                    scorer=scorer, **common)
        loc = localize_heatmap(heatmap, self.fmap, **common)
        if not rerank_thresholds:
            return loc
        proposals = np.unique(np.stack([heatmap_box_xyxy(heatmap, self.fmap, threshold=t, upsample=box_upsample)
                                        for t in rerank_thresholds]), axis=0)  # [P, 4]
        scores = self.candidate_scores(expression, proposals, scorer=scorer, heatmap=heatmap)  # [P]
        best = int(torch.argmax(scores))
        return replace(loc, box_xyxy=proposals[best], score=float(scores[best]), candidate_scores=scores,
                       method=f"{self.method}+components-{scorer}")

    def localize_many(self, expressions: Sequence[str], **kwargs) -> list[Localization]:
        """Several expressions: their heatmaps in one call, then :meth:`localize` each."""
        self.heatmaps(list(expressions))
        return [self.localize(e, **kwargs) for e in expressions]


def localize_heatmap(heatmap: torch.Tensor, fmap: FeatureMap, *, expression: str = "", method: str = "",
                     candidates_xyxy=None, candidate_scores: torch.Tensor | None = None, scorer: str = "",
                     box_threshold: float = DEFAULT_BOX_THRESHOLD, box_upsample: int = DEFAULT_BOX_UPSAMPLE,
                     refine: str = "quadratic") -> Localization:
    """A heatmap ``[gh, gw]`` (+ optional candidate boxes ``[K, 4]`` with their scores ``[K]``) -> Localization."""
    heatmap = _check_heatmap(heatmap, fmap)
    if candidates_xyxy is None:
        peak_ij = refine_peak_grid(heatmap, refine=refine)
        box_xyxy = heatmap_box_xyxy(heatmap, fmap, threshold=box_threshold, upsample=box_upsample)
        point_xy = fmap.grid_to_pixel_xy(peak_ij)
        return Localization(box_xyxy=box_xyxy, point_xy=point_xy, score=float(heatmap.max()), heatmap=heatmap,
                            peak_grid=peak_ij, expression=expression, method=method)
    boxes = np.asarray(candidates_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
    if len(boxes) == 0:
        raise ValueError("candidates_xyxy is empty; pass None to localize without candidates")
    if candidate_scores is None or len(candidate_scores) != len(boxes):
        raise ValueError(f"need one score per candidate box ({len(boxes)})")
    best = int(torch.argmax(candidate_scores))
    box_xyxy = boxes[best].copy()
    inside = box_patch_weights(fmap, box_xyxy[None])[0] > 0  # [gh, gw]
    peak_ij = refine_peak_grid(heatmap, allowed=inside, refine=refine)
    point_xy = np.clip(fmap.grid_to_pixel_xy(peak_ij), box_xyxy[:2], box_xyxy[2:])
    return Localization(box_xyxy=box_xyxy, point_xy=point_xy, score=float(candidate_scores[best]), heatmap=heatmap,
                        peak_grid=peak_ij, expression=expression, method=f"{method}+{scorer}",
                        candidate_scores=candidate_scores, candidate_index=best)


def localize(encoder, image_or_featuremap: ImageInput | FeatureMap, expression: str, *, candidates_xyxy=None,
             method: str | None = None, scorer: str = DEFAULT_CANDIDATE_METHOD,
             box_threshold: float = DEFAULT_BOX_THRESHOLD, box_upsample: int = DEFAULT_BOX_UPSAMPLE,
             refine: str = "quadratic", rerank_thresholds: Sequence[float] | None = None,
             templates: Sequence[str] | None = None, image: ImageInput | None = None) -> Localization:
    """Where does ``expression`` point in the image? -> :class:`Localization` (box_xyxy, point_xy, score, heatmap).

    Args:
        encoder: from :func:`dense.load_encoder` (its text side loads on first use).
        image_or_featuremap: an image (extracted here) or a :class:`FeatureMap` of it (``layers=(-1,)``): pass the
            FeatureMap to localize many expressions on one extraction (or use :class:`Localizer`).
        expression: e.g. ``"the mug on the left"``.
        candidates_xyxy: optional ``[K, 4]`` boxes in original-image pixels; the best-scoring one is returned.
        method: heatmap method of :func:`dense.heatmap.patch_scores` (None = its default).
        scorer: candidate scorer, one of ``CANDIDATE_METHODS`` (``"crop"`` needs the image).
        box_threshold: relative threshold in [0, 1] for the box without candidates.
        box_upsample: heatmap cells per patch side for that box.
        refine: sub-patch peak refinement, ``"quadratic"`` or ``"none"``.
        rerank_thresholds: without candidates, re-rank the component boxes at these thresholds with ``scorer``
            (e.g. ``BOX_THRESHOLDS``) instead of cutting at ``box_threshold`` alone.
        templates: prompt templates for the text side (None = the expression verbatim).
        image: the image, when ``image_or_featuremap`` is a FeatureMap and ``scorer="crop"``.
    """
    loc = Localizer(encoder, image_or_featuremap, method=method, templates=templates, image=image)
    return loc.localize(expression, candidates_xyxy=candidates_xyxy, scorer=scorer, box_threshold=box_threshold,
                        box_upsample=box_upsample, refine=refine, rerank_thresholds=rerank_thresholds)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation on RefCOCO-style annotations: dense eval refer

BOX_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def evaluate_refer(encoder, ann: str | Path, refs: str | Path, images: str | Path, *, split: str | None = "val",
                   methods: Sequence[str] | None = None, scorers: Sequence[str] = ("map-box", "heatmap-mean"),
                   thresholds: Sequence[float] = BOX_THRESHOLDS, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                   templates: Sequence[str] | None = None, limit: int | None = None, max_patches: int | None = None,
                   progress: bool = False) -> dict:
    """Acc@0.5 and pointing accuracy of referring-expression localization on a COCO + RefCOCO-style dataset.

    Every sentence of every ref of ``split`` is one sample (as in RefCOCO's evaluation). Per heatmap method:

    - ``setting="none"`` (no candidates): the component box at ``box_threshold`` and the refined peak; Acc@0.5 at every
      threshold of ``thresholds`` goes to ``sweep``; scorer ``components+map-box``: the components at all
      ``thresholds`` re-ranked by the map-box scorer (``rerank_thresholds``);
    - ``setting="gt-boxes"``: the image's non-crowd ground-truth boxes are the candidates, ranked by each scorer.

    Baselines: ``random`` (a uniformly random candidate: the EXPECTED Acc@0.5 / pointing over candidates, its point at
    the box centre) and ``centre-prior`` (no candidates: the whole image as box, its centre as point).
    Each image is extracted once, with the layers all ``methods`` need. Returns a JSON-ready dict.
    """
    from tqdm.auto import tqdm

    from dense import coco, metrics

    hm = _heatmap_module()
    methods = list(methods or [hm.DEFAULT_METHOD])
    # methods a FeatureMap cannot serve (clear-* on a 1-block tower needs the image) get their own extraction
    from_image = {m for m in methods if hm.METHODS[m].needs_prev and encoder.num_layers < 2}
    layers = tuple(sorted({layer for m in methods if m not in from_image for layer in hm.required_layers(m)} or {-1}))
    for s in scorers:
        if s not in CANDIDATE_METHODS:
            raise ValueError(f"unknown candidate scorer {s!r}; choose from {CANDIDATE_METHODS}")
    ds = coco.load_coco(ann, images)
    by_image: dict[int, list] = {}
    for r in coco.load_refs(refs, ds, split=split):
        by_image.setdefault(r.image_id, []).append(r)
    image_ids = sorted(by_image)[:limit] if limit is not None else sorted(by_image)

    gt_boxes, pred = [], {}  # pred[(setting, method, scorer, threshold)] -> list of boxes [4]
    hits: dict[tuple, list[bool]] = {}  # the Localization's point_xy in the target's mask?
    centre_hits: dict[tuple, list[bool]] = {}  # the centre of its box_xyxy in the mask?
    random_acc, random_point = [], []
    seconds = {"extract": 0.0, "localize": 0.0}
    n_sentences, n_cands = 0, []  # n_cands: candidates per sample
    for iid in tqdm(image_ids, desc="refer", unit="img", disable=not progress):
        path = ds.image_path(iid)
        rgb = load_image(path)
        if rgb.shape[:2] != ds.image_hw(iid):
            raise ValueError(f"{path}: image is {rgb.shape[:2]}, annotation says {ds.image_hw(iid)}")
        t0 = time.perf_counter()
        fmap = encoder.extract(rgb, max_patches=max_patches, layers=layers)
        seconds["extract"] += time.perf_counter() - t0
        cand_anns = ds.anns(iid, crowd=False)
        cands_xyxy = np.stack([ds.box_xyxy(a["id"]) for a in cand_anns])  # [K, 4]
        H, W = rgb.shape[:2]
        centre_xy = np.array([W / 2, H / 2])
        whole_xyxy = np.array([0.0, 0.0, W, H])
        locs = {m: Localizer(encoder, rgb if m in from_image else fmap, method=m, templates=templates,
                             max_patches=max_patches, image=rgb) for m in methods}
        for ref in by_image[iid]:
            gt_xyxy, mask = ds.box_xyxy(ref.ann_id), ds.mask(ref.ann_id)
            cand_centres_xy = (cands_xyxy[:, :2] + cands_xyxy[:, 2:]) / 2  # [K, 2]
            rand_acc = float((metrics.box_iou_xyxy(cands_xyxy, gt_xyxy)[:, 0] >= 0.5).mean())
            rand_point = float(metrics.pointing_hits(cand_centres_xy, [mask] * len(cand_centres_xy)).mean())
            for sent in ref.sentences:
                n_sentences += 1
                gt_boxes.append(gt_xyxy)
                n_cands.append(len(cands_xyxy))
                random_acc.append(rand_acc)
                random_point.append(rand_point)
                out = {("none", "centre-prior", "-", None): (whole_xyxy, centre_xy)}
                t0 = time.perf_counter()
                for m, loc in locs.items():
                    heatmap = loc.heatmaps([sent])[0]
                    for t in thresholds:
                        box = heatmap_box_xyxy(heatmap, loc.fmap, threshold=t)
                        pred.setdefault(("none", m, "-", float(t)), []).append(box)
                    r = loc.localize(sent, box_threshold=box_threshold)
                    out[("none", m, "-", None)] = (r.box_xyxy, r.point_xy)
                    r = loc.localize(sent, rerank_thresholds=thresholds)
                    out[("none", m, "components+map-box", None)] = (r.box_xyxy, r.point_xy)
                    for s in scorers:
                        r = loc.localize(sent, candidates_xyxy=cands_xyxy, scorer=s)
                        out[("gt-boxes", m, s, None)] = (r.box_xyxy, r.point_xy)
                seconds["localize"] += time.perf_counter() - t0
                for key, (box, point_xy) in out.items():
                    pred.setdefault(key, []).append(box)
                    hits.setdefault(key, []).append(bool(metrics.pointing_hits(point_xy[None], [mask])[0]))
                    centre_hit = metrics.pointing_hits(((box[:2] + box[2:]) / 2)[None], [mask])[0]
                    centre_hits.setdefault(key, []).append(bool(centre_hit))

    def figures(sel: np.ndarray) -> list[dict]:
        """Rows over the samples selected by bool ``sel [n_sentences]``."""
        gt = np.asarray(gt_boxes).reshape(-1, 4)[sel]

        def row(setting, method, scorer, key, thr=None):
            return {"setting": setting, "method": method, "scorer": scorer, "box_threshold": thr,
                    "acc@0.5": metrics.acc_at_iou(np.asarray(pred[key]).reshape(-1, 4)[sel], gt),
                    "pointing": float(np.mean(np.asarray(hits[key])[sel])) if sel.any() else float("nan"),
                    "pointing_box_centre": float(np.mean(np.asarray(centre_hits[key])[sel])) if sel.any()
                    else float("nan")}

        out = [row("none", "centre-prior", "-", ("none", "centre-prior", "-", None))]
        out += [row("none", m, "-", ("none", m, "-", None), box_threshold) for m in methods]
        out += [row("none", m, "components+map-box", ("none", m, "components+map-box", None)) for m in methods]
        out += [row("gt-boxes", m, s, ("gt-boxes", m, s, None)) for m in methods for s in scorers]
        out.append({"setting": "gt-boxes", "method": "-", "scorer": "random (expected)", "box_threshold": None,
                    "acc@0.5": float(np.mean(np.asarray(random_acc)[sel])) if sel.any() else float("nan"),
                    "pointing": float(np.mean(np.asarray(random_point)[sel])) if sel.any() else float("nan")})
        out[-1]["pointing_box_centre"] = out[-1]["pointing"]  # the random baseline points at box centres
        return out

    every = np.ones(n_sentences, dtype=bool)
    rows, rows_multi = figures(every), figures(np.asarray(n_cands) >= 2)
    sweep = {m: {str(t): metrics.acc_at_iou(pred[("none", m, "-", float(t))], gt_boxes) for t in thresholds}
             for m in methods} if n_sentences else {}
    n_refs = sum(len(by_image[iid]) for iid in image_ids)
    return {"rows": rows, "rows_multi": rows_multi, "box_threshold_sweep": sweep, "n_images": len(image_ids),
            "n_refs": n_refs, "n_sentences": n_sentences, "n_multi": int(np.sum(np.asarray(n_cands) >= 2)),
            "seconds": seconds, "ann": str(ann), "refs": str(refs), "split": split,
            "encoder": encoder.name, "templates": None if templates is None else list(templates),
            "scorers": list(scorers), "methods": methods}


def format_refer_table(res: dict) -> str:
    """The rows of :func:`evaluate_refer` and its threshold sweep as a plain-text table."""
    lines = [f"{'':<51}{'all expressions':>24}{'images with >= 2 objects':>29}",
             f"{'setting':<10}{'method':<22}{'scorer':<19}" + f"{'Acc@0.5':>8}{'point':>8}{'ctr-pt':>8}" * 2]
    for r, rm in zip(res["rows"], res["rows_multi"], strict=True):
        thr = "" if r["box_threshold"] is None else f"  (box threshold {r['box_threshold']})"
        lines.append(f"{r['setting']:<10}{r['method']:<22}{r['scorer']:<19}"
                     + "".join(f"{x['acc@0.5']:8.3f}{x['pointing']:8.3f}{x['pointing_box_centre']:8.3f}"
                               for x in (r, rm)) + thr)
    lines.append("point: the Localization's point_xy in the target mask; ctr-pt: the centre of its box in the mask")
    if res["box_threshold_sweep"]:
        thresholds = list(next(iter(res["box_threshold_sweep"].values())))
        lines += ["", "Acc@0.5 without candidates, by relative box threshold:",
                  f"{'method':<22}" + "".join(f"{t:>7}" for t in thresholds)]
        for m, accs in res["box_threshold_sweep"].items():
            lines.append(f"{m:<22}" + "".join(f"{accs[t]:7.3f}" for t in thresholds))
    sec = res["seconds"]
    lines.append(f"\n{res['n_sentences']} expressions ({res['n_refs']} refs, {res['n_multi']} on images with >= 2 "
                 f"objects) on {res['n_images']} images; "
                 f"extraction {sec['extract']:.1f} s, localization {sec['localize']:.1f} s (all methods, scorers, "
                 f"thresholds)")
    return "\n".join(lines)


def add_cli(sub, eval_sub) -> None:
    e = eval_sub.add_parser("refer", help="referring-expression localization (Acc@0.5, pointing) on RefCOCO-style refs")
    e.add_argument("--ann", required=True, help="COCO instances JSON")
    e.add_argument("--refs", required=True, help="refs in the RefCOCO layout (JSON, or the official refs(unc).p)")
    e.add_argument("--images", required=True, help="image folder")
    e.add_argument("--split", default="val", help="the refs' split to evaluate ('all' for every split)")
    e.add_argument("--model", default="shapes-tiny")
    e.add_argument("--methods", default=None, help="comma-separated heatmap methods of dense.heatmap, or 'all' "
                                                   "(default: dense.heatmap.DEFAULT_METHOD)")
    e.add_argument("--scorers", default="map-box,heatmap-mean",
                   help=f"comma-separated candidate scorers ({', '.join(CANDIDATE_METHODS)})")
    e.add_argument("--box-threshold", type=float, default=DEFAULT_BOX_THRESHOLD,
                   help="relative threshold in [0, 1] for the box without candidates")
    e.add_argument("--thresholds", default=",".join(map(str, BOX_THRESHOLDS)), help="thresholds to sweep")
    e.add_argument("--templates", default="none", help="'none' (expressions verbatim), 'default', or '|'-separated")
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    e.add_argument("--max-patches", type=int, default=None)
    e.add_argument("--out", default=None, help="JSON to write (atomically)")
    e.set_defaults(func=_cli_refer)


def _cli_refer(args) -> int:
    import dense
    from dense.text import DEFAULT_TEMPLATES

    hm = _heatmap_module()
    methods = None
    if args.methods == "all":
        methods = list(hm.METHODS)
    elif args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    templates = {"none": None, "default": DEFAULT_TEMPLATES}.get(args.templates) or (
        None if args.templates == "none" else tuple(args.templates.split("|")))
    enc = dense.load_encoder(args.model)
    if args.methods == "all":  # the clear-* methods need a block before the last: not in a 1-block tower
        methods = hm.supported_methods(enc)
        skipped = sorted(set(hm.METHODS) - set(methods))
        if skipped:
            print(f"skipped (need more than {enc.num_layers} block(s)): {', '.join(skipped)}")
    res = evaluate_refer(enc, args.ann, args.refs, args.images, split=None if args.split == "all" else args.split,
                         methods=methods, scorers=[s.strip() for s in args.scorers.split(",") if s.strip()],
                         thresholds=[float(t) for t in args.thresholds.split(",")], box_threshold=args.box_threshold,
                         templates=templates, limit=args.limit, max_patches=args.max_patches, progress=True)
    print(format_refer_table(res))
    if args.out:
        print(f"wrote {write_json(args.out, res, indent=2)}")
    return 0

"""Referring-expression localization: an expression -> ``box_xyxy`` and ``point_xy`` in original-image pixels.

Two ways, both reading one :class:`~dense.FeatureMap` (compute once, query many):

- **Without candidates** (``candidates_xyxy=None``): the expression's dense heatmap ``[gh, gw]``
  (:func:`dense.heatmap.patch_scores`, sigmoid probabilities) gives

  - the point: the peak patch, refined below the patch size by a quadratic fit along each axis through the peak and its
    two neighbours (:func:`find_peak_grid`), mapped to pixels by :func:`dense.preprocess.grid_to_pixel_xy`;
  - the box: the heatmap is upsampled ``box_factor`` times (bilinear, ``align_corners=False`` so sample centres stay
    where the geometry says), thresholded at ``min + box_threshold * (peak - min)`` (a RELATIVE threshold in [0, 1];
    ``peak``: the upsampled cell holding the point), and the 8-connected component (OpenCV) holding the point becomes
    the box (:func:`heatmap_box_xyxy`). One maximum gives both, so the point lies in its box by construction (two
    maxima, the grid's and the upsampled map's, named two objects when two peaks were nearly equal). The default
    threshold is the encoder's calibration (``encoder.calibration.box_threshold``); ``dense eval refer`` sweeps it.

- **With candidate boxes** (ground-truth boxes, or a detector's proposals): each box is scored against the expression
  and the best one wins. Scorers (``SCORERS``):

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

**Not found.** Every answer carries its ``score``; below the checkpoint's ``found_threshold``
(:class:`dense.checkpoint.Calibration`, measured for the bundled models by ``scripts/measure_found_threshold.py``) the
answer says ``found=False``: the expression probably names nothing in the image. Its box and point are still the best
guess (evaluations score them), but figures draw no box for it, only a note.

:class:`Localizer` holds one image's FeatureMap and caches heatmaps per expression, so localizing 20 expressions costs
one extraction plus 20 cheap head passes; :func:`localize` is the one-call form (pass a FeatureMap to reuse one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from dense import head as maphead
from dense.errors import InputError
from dense.features import FeatureMap
from dense.heatmap import (
    ImageOrFeatureMap,
    check_featuremap,
    logits,
    method_of,
    patch_scores,
    templates_of,
    with_aligned,
)
from dense.openvocab import embed_images
from dense.preprocess import ImageInput, grid_cell_xyxy, grid_to_pixel_xy, load_image
from dense.text import check_queries, embed_texts

SCORERS = ("map-box", "heatmap-mean", "crop")
DEFAULT_SCORER = "map-box"
BOX_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the relative thresholds `dense eval refer` sweeps
DEFAULT_BOX_FACTOR = 4  # heatmap cells per patch side when the component is cut
PEAK_RULES = ("quadratic", "none")  # sub-patch peak: a parabola through the peak and its neighbours, or none


@dataclass(frozen=True, eq=False)
class Localization:
    """Where an expression points in one image, and whether it is there at all.

    Attributes:
        box_xyxy: float64 ``[4]`` in original-image pixels (the best guess, also when not found).
        point_xy: float64 ``[2]`` in original-image pixels.
        score: sigmoid probability of the answer: the heatmap peak (no candidates) or the chosen box's score.
        found: ``score >= found_threshold`` (the calibration's, unless given); False: "not found", figures draw no box.
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
    found: bool = True

    def __repr__(self) -> str:  # short: the heatmap and candidate scores are tensors, not for printing
        box = ", ".join(f"{v:.1f}" for v in self.box_xyxy)
        point = ", ".join(f"{v:.1f}" for v in self.point_xy)
        return (f"Localization({self.expression!r}, box_xyxy=[{box}], point_xy=[{point}], score={self.score:.3f}, "
                f"found={self.found})")


# ---------------------------------------------------------------------------------------------------------------------
# Heatmap -> point and box (no text, no model: pure geometry on a score map)


def _check_found_threshold(found_threshold: float) -> None:
    if not 0.0 <= found_threshold <= 1.0:
        raise InputError(f"found_threshold is a probability in [0, 1], got {found_threshold}")


def _check_heatmap(heatmap: torch.Tensor, fmap: FeatureMap) -> torch.Tensor:
    heatmap = torch.as_tensor(heatmap, dtype=torch.float32)
    if heatmap.ndim != 2 or tuple(heatmap.shape) != fmap.grid_hw:
        raise InputError(f"heatmap {tuple(heatmap.shape)} does not match the FeatureMap grid {fmap.grid_hw}")
    return heatmap


def find_peak_grid(heatmap: torch.Tensor, *, allowed: torch.Tensor | None = None,
                     peak: str = "quadratic") -> np.ndarray:
    """The heatmap's peak as a fractional patch ``(i, j)``: float64 ``[2]``.

    ``heatmap``: ``[gh, gw]``. ``allowed``: optional bool ``[gh, gw]``; the peak is searched among allowed patches only
    (all, when none is allowed). ``peak``: ``"quadratic"`` fits a parabola through the peak and its two neighbours
    along each axis (exact for a quadratic peak; the offset is clipped to half a patch and dropped at the border or
    where the three values are not concave); ``"none"`` returns the patch centre.
    """
    if peak not in PEAK_RULES:
        raise InputError(f"peak must be one of {PEAK_RULES}, got {peak!r}")
    s = torch.as_tensor(heatmap, dtype=torch.float64)
    gh, gw = s.shape
    search = s if allowed is None or not bool(allowed.any()) else s.masked_fill(~allowed.bool(), float("-inf"))
    flat = int(torch.argmax(search))
    i, j = divmod(flat, gw)
    peak_ij = np.array([i, j], dtype=np.float64)
    if peak == "none":
        return peak_ij
    for axis, (pos, size) in enumerate(((i, gh), (j, gw))):
        if pos == 0 or pos == size - 1:
            continue
        if axis == 0:
            lo, mid, hi = float(s[i - 1, j]), float(s[i, j]), float(s[i + 1, j])
        else:
            lo, mid, hi = float(s[i, j - 1]), float(s[i, j]), float(s[i, j + 1])
        curvature = lo - 2.0 * mid + hi
        if curvature < 0:  # concave: a real maximum
            peak_ij[axis] += float(np.clip(0.5 * (lo - hi) / curvature, -0.5, 0.5))
    return peak_ij


def heatmap_box_xyxy(heatmap: torch.Tensor, fmap: FeatureMap, *, threshold: float = 0.5,
                     factor: int = DEFAULT_BOX_FACTOR, peak_grid=None) -> np.ndarray:
    """The box of the connected component around the heatmap's peak: float64 ``[4]`` xyxy, original pixels.

    ``peak_grid``: the peak as a fractional patch ``(i, j)`` (the Localization's ``peak_grid``; None:
    :func:`find_peak_grid` of the heatmap). The ``[gh, gw]`` heatmap is upsampled ``factor`` times (bilinear,
    ``align_corners=False``); fine cell ``a`` spans patch coordinates ``[a / factor - 0.5, (a + 1) / factor - 0.5]``,
    so the peak lies in fine cell ``floor((i + 0.5) * factor)``. Cells are kept where the map is at least
    ``min + threshold * (peak - min)`` (``peak``: the value of the peak's cell, always kept) and split into
    8-connected components (``cv2.connectedComponentsWithStats``); the component holding the peak's cell gives the
    box, mapped to pixels by :func:`grid_to_pixel_xy`. The peak, in pixels, therefore lies in the box.
    """
    import cv2
    import torch.nn.functional as F

    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold is relative and must lie in [0, 1], got {threshold}")
    if factor < 1:
        raise InputError(f"factor must be >= 1, got {factor}")
    s = _check_heatmap(heatmap, fmap)
    k = int(factor)
    peak_ij = find_peak_grid(s) if peak_grid is None else np.asarray(peak_grid, dtype=np.float64)
    fine = F.interpolate(s[None, None], scale_factor=k, mode="bilinear", align_corners=False)[0, 0]  # [gh*k, gw*k]
    a, b = (int(np.clip(np.floor((v + 0.5) * k), 0, n - 1)) for v, n in zip(peak_ij, fine.shape, strict=True))
    lo, top = float(fine.min()), float(fine[a, b])
    keep = (fine >= lo + threshold * (top - lo)).numpy().astype(np.uint8)  # [gh*k, gw*k]; the peak's cell is kept
    _, labels, stats, _ = cv2.connectedComponentsWithStats(keep, connectivity=8)
    x, y, w, h = (int(v) for v in stats[labels[a, b], :4])  # fine columns [x, x+w), rows [y, y+h)
    corners_ij = np.array([[y / k - 0.5, x / k - 0.5], [(y + h) / k - 0.5, (x + w) / k - 0.5]])  # [2, (i, j)]
    corners_xy = grid_to_pixel_xy(corners_ij, fmap.image_hw, fmap.resized_hw, fmap.patch_size)  # [2, (x, y)]
    return corners_xy.reshape(4)  # [[x0, y0], [x1, y1]] -> [x0, y0, x1, y1]


def peak_in_box(heatmap: torch.Tensor, fmap: FeatureMap, box_xyxy, *, peak: str = "quadratic"
                ) -> tuple[np.ndarray, np.ndarray]:
    """The point of a box that came from elsewhere (a candidate, a regression head): the heatmap's refined peak among
    the patches the box covers, in pixels clipped into the box. Returns ``(peak_grid [2], point_xy [2])``; the point
    lies in ``box_xyxy`` by construction."""
    box_xyxy = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
    inside = box_patch_weights(fmap, box_xyxy[None])[0] > 0  # [gh, gw]
    peak_ij = find_peak_grid(heatmap, allowed=inside, peak=peak)
    return peak_ij, np.clip(fmap.grid_to_pixel_xy(peak_ij), box_xyxy[:2], box_xyxy[2:])


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


def region_embeddings(encoder, fmap: FeatureMap, boxes_xyxy) -> torch.Tensor:
    """Unit-normalized MAP embeddings of boxes (original-image pixels): ``[K, E]``, one head pass for all boxes."""
    weights = box_patch_weights(fmap, boxes_xyxy)  # [K, gh, gw]
    tokens = check_featuremap(encoder, fmap, (-1,), "region pooling")  # [gh, gw, D], the last block
    emb = maphead.pool_with_weights(encoder.vision.head, tokens, weights)  # [K, E]
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
    return embed_images(encoder, fmaps)  # [K, E], unit


def calibrated_scores(encoder, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities with the checkpoint's ``logit_scale`` / ``logit_bias``: ``[K, E] x [E] -> [K]``."""
    return torch.sigmoid(logits(encoder, image_emb, text_emb.reshape(1, -1))[0])  # [1, K] -> [K]


# ---------------------------------------------------------------------------------------------------------------------
# The user layer


class Localizer:
    """One image, many expressions: extract once, cache text embeddings and heatmaps.

        >>> loc = Localizer(enc, "photo.jpg")            # one extraction
        >>> loc.localize("the dog on the left")          # Localization
        >>> loc.localize("the red mug", candidates_xyxy=boxes)

    ``image``: a path / PIL image / uint8 array (read with :func:`dense.preprocess.load_image`), or a
    :class:`FeatureMap` of it when the ``"crop"`` scorer (which re-encodes the image) is not used. ``features``: the
    image's FeatureMap, already extracted by the same encoder with the layers the method needs
    (``dense.heatmap.required_layers``; ``(-1,)`` for the default); without it the image is extracted here.
    ``method``, ``templates``: None = the encoder's calibration (:class:`dense.checkpoint.Calibration`).
    """

    def __init__(self, encoder, image: ImageOrFeatureMap, *, features: FeatureMap | None = None,
                 method: str | None = None, templates: Sequence[str] | None = None, max_patches: int | None = None):
        self.encoder = encoder
        self.templates = templates_of(encoder, templates)
        self.max_patches = max_patches
        self.method = method_of(encoder, method)
        if isinstance(image, FeatureMap):
            if features is not None:
                raise InputError("image is a FeatureMap and features= is given too: pass the image itself as image")
            image, features = None, image
        self.rgb = None if image is None else load_image(image)
        if features is not None:
            if self.rgb is not None and tuple(self.rgb.shape[:2]) != tuple(features.image_hw):
                raise InputError(f"image is {tuple(self.rgb.shape[:2])}, its FeatureMap (features=) was made from "
                                 f"{tuple(features.image_hw)}")
            self.fmap = with_aligned(encoder, features, self.method)  # aligned tokens computed once
        else:
            # one extraction, with the layers the method needs
            self.fmap = with_aligned(encoder, self.rgb, self.method, max_patches=max_patches)
        self._heatmaps: dict[str, torch.Tensor] = {}
        self._regions: dict[tuple[str, bytes], torch.Tensor] = {}  # (scorer, boxes) -> [K, E]

    def text_embeddings(self, expressions: Sequence[str]) -> torch.Tensor:
        """``[T, E]`` unit-normalized (cached by :func:`dense.text.embed_texts`)."""
        return embed_texts(self.encoder, list(expressions), templates=self.templates)

    def heatmaps(self, expressions: Sequence[str]) -> torch.Tensor:
        """``[T, gh, gw]`` sigmoid patch scores; the missing ones are computed in one call, then cached."""
        missing = [e for e in dict.fromkeys(expressions) if e not in self._heatmaps]
        if missing:
            scores = patch_scores(self.encoder, self.fmap, missing, method=self.method,
                                  templates=self.templates)  # [M, gh, gw]
            self._heatmaps.update(zip(missing, scores.float(), strict=True))
        if not expressions:
            return torch.zeros(0, *self.fmap.grid_hw)
        return torch.stack([self._heatmaps[e] for e in expressions])

    def candidate_scores(self, expression: str, candidates_xyxy, *, scorer: str = DEFAULT_SCORER,
                         heatmap: torch.Tensor | None = None) -> torch.Tensor:
        """``[K]`` scores of candidate boxes for one expression (see ``SCORERS``)."""
        if scorer not in SCORERS:
            raise InputError(f"unknown candidate scorer {scorer!r}; choose one of {SCORERS}")
        boxes = np.asarray(candidates_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
        if len(boxes) == 0:
            raise InputError("candidates_xyxy is empty; pass None to localize without candidates")
        if scorer == "heatmap-mean":
            heatmap = self.heatmaps([expression])[0] if heatmap is None else heatmap
            w = box_patch_weights(self.fmap, boxes)  # [K, gh, gw]
            return (w * heatmap).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
        key = (scorer, boxes.tobytes())
        emb = self._regions.get(key)
        if emb is None and scorer == "crop":
            if self.rgb is None:
                raise InputError("the 'crop' scorer re-encodes the image: pass the image as image= (and its "
                                 "FeatureMap as features=)")
            emb = self._regions[key] = crop_embeddings(self.encoder, self.rgb, boxes, max_patches=self.max_patches)
        elif emb is None:
            emb = self._regions[key] = region_embeddings(self.encoder, self.fmap, boxes)  # [K, E], one head pass
        return calibrated_scores(self.encoder, emb, self.text_embeddings([expression])[0])

    def localize(self, expression: str, *, candidates_xyxy=None, scorer: str = DEFAULT_SCORER,
                 box_threshold: float | None = None, box_factor: int = DEFAULT_BOX_FACTOR,
                 peak: str = "quadratic", rerank_thresholds: Sequence[float] | None = None,
                 found_threshold: float | None = None) -> Localization:
        """One expression -> :class:`Localization` (see the module docstring for the rules).

        ``box_threshold``, ``found_threshold`` None: the encoder's calibrated ones.

        ``rerank_thresholds`` (only without candidates): instead of the one component at ``box_threshold``, take the
        component boxes at each of these thresholds as the expression's own proposals and keep the one ``scorer``
        ranks best (the point stays the heatmap peak).
        """
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a string, got {type(expression).__name__}; use localize_many")
        check_queries(expression, "expression")  # never empty: before any text is embedded
        if found_threshold is None:
            found_threshold = self.encoder.calibration.found_threshold
        _check_found_threshold(found_threshold)  # before any text is embedded
        heatmap = self.heatmaps([expression])[0]  # [gh, gw]
        if box_threshold is None:
            box_threshold = self.encoder.calibration.box_threshold
        common = dict(expression=expression, method=self.method, box_threshold=box_threshold,
                      box_factor=box_factor, peak=peak, found_threshold=found_threshold)
        if candidates_xyxy is not None:
            scores = self.candidate_scores(expression, candidates_xyxy, scorer=scorer, heatmap=heatmap)  # [K]
            return localize_heatmap(heatmap, self.fmap, candidates_xyxy=candidates_xyxy, candidate_scores=scores,
                                    scorer=scorer, **common)
        loc = localize_heatmap(heatmap, self.fmap, **common)
        if not rerank_thresholds:
            return loc
        proposals = np.unique(np.stack([heatmap_box_xyxy(heatmap, self.fmap, threshold=t, factor=box_factor,
                                                         peak_grid=loc.peak_grid)
                                        for t in rerank_thresholds]), axis=0)  # [P, 4], each holding the point
        scores = self.candidate_scores(expression, proposals, scorer=scorer, heatmap=heatmap)  # [P]
        best = int(torch.argmax(scores))
        return replace(loc, box_xyxy=proposals[best], score=float(scores[best]), candidate_scores=scores,
                       method=f"{self.method}+components-{scorer}", found=float(scores[best]) >= found_threshold)

    def localize_many(self, expressions: Sequence[str], **kwargs) -> list[Localization]:
        """Several expressions: their heatmaps in one call, then :meth:`localize` each."""
        self.heatmaps(list(expressions))
        return [self.localize(e, **kwargs) for e in expressions]


def localize_heatmap(heatmap: torch.Tensor, fmap: FeatureMap, *, expression: str = "", method: str = "",
                     candidates_xyxy=None, candidate_scores: torch.Tensor | None = None, scorer: str = "",
                     box_threshold: float = 0.5, box_factor: int = DEFAULT_BOX_FACTOR,
                     peak: str = "quadratic", found_threshold: float = 0.0) -> Localization:
    """A heatmap ``[gh, gw]`` (+ optional candidate boxes ``[K, 4]`` with their scores ``[K]``) -> Localization;
    ``found`` is ``score >= found_threshold``."""
    _check_found_threshold(found_threshold)
    heatmap = _check_heatmap(heatmap, fmap)
    if candidates_xyxy is None:
        peak_ij = find_peak_grid(heatmap, peak=peak)  # one maximum for the point and the box
        box_xyxy = heatmap_box_xyxy(heatmap, fmap, threshold=box_threshold, factor=box_factor, peak_grid=peak_ij)
        point_xy = fmap.grid_to_pixel_xy(peak_ij)
        score = float(heatmap.max())
        return Localization(box_xyxy=box_xyxy, point_xy=point_xy, score=score, heatmap=heatmap,
                            peak_grid=peak_ij, expression=expression, method=method, found=score >= found_threshold)
    boxes = np.asarray(candidates_xyxy, dtype=np.float64).reshape(-1, 4)  # [K, 4]
    if len(boxes) == 0:
        raise InputError("candidates_xyxy is empty; pass None to localize without candidates")
    if candidate_scores is None or len(candidate_scores) != len(boxes):
        raise InputError(f"need one score per candidate box ({len(boxes)})")
    best = int(torch.argmax(candidate_scores))
    box_xyxy = boxes[best].copy()
    peak_ij, point_xy = peak_in_box(heatmap, fmap, box_xyxy, peak=peak)
    score = float(candidate_scores[best])
    return Localization(box_xyxy=box_xyxy, point_xy=point_xy, score=score, heatmap=heatmap,
                        peak_grid=peak_ij, expression=expression, method=f"{method}+{scorer}",
                        candidate_scores=candidate_scores, candidate_index=best, found=score >= found_threshold)


def localize(encoder, image: ImageOrFeatureMap, expression: str, *, candidates_xyxy=None,
             method: str | None = None, scorer: str = DEFAULT_SCORER, box_threshold: float | None = None,
             box_factor: int = DEFAULT_BOX_FACTOR, peak: str = "quadratic",
             rerank_thresholds: Sequence[float] | None = None, templates: Sequence[str] | None = None,
             max_patches: int | None = None, features: FeatureMap | None = None,
             found_threshold: float | None = None) -> Localization:
    """Where does ``expression`` point in the image? -> :class:`Localization` (box_xyxy, point_xy, score, found,
    heatmap).

    Args:
        encoder: from :func:`dense.load_encoder` (its text side loads on first use).
        image: a path, PIL image or uint8 array (extracted here unless ``features`` is given), or a
            :class:`FeatureMap` of it (not for ``scorer="crop"``); to localize many expressions on one extraction use
            :class:`Localizer`.
        expression: e.g. ``"the mug on the left"``.
        candidates_xyxy: optional ``[K, 4]`` boxes in original-image pixels; the best-scoring one is returned.
        method: heatmap method of :func:`dense.heatmap.patch_scores` (None = the encoder's calibration).
        scorer: candidate scorer, one of ``SCORERS`` (``"crop"`` needs the image).
        box_threshold: relative threshold in [0, 1] for the box without candidates (None = the calibration's).
        box_factor: heatmap cells per patch side for that box.
        peak: sub-patch peak rule, ``"quadratic"`` or ``"none"`` (``PEAK_RULES``).
        rerank_thresholds: without candidates, re-rank the component boxes at these thresholds with ``scorer``
            (e.g. ``BOX_THRESHOLDS``) instead of cutting at ``box_threshold`` alone.
        templates: prompt templates for the text side (None = the calibration's).
        max_patches: token budget when ``image`` is extracted here.
        features: the image's FeatureMap, already extracted (then ``image`` is read only by the ``"crop"`` scorer).
        found_threshold: a score below it is "not found" (``found=False``); None = the calibration's.
    """
    loc = Localizer(encoder, image, features=features, method=method, templates=templates, max_patches=max_patches)
    return loc.localize(expression, candidates_xyxy=candidates_xyxy, scorer=scorer, box_threshold=box_threshold,
                        box_factor=box_factor, peak=peak, rerank_thresholds=rerank_thresholds,
                        found_threshold=found_threshold)

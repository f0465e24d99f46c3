"""Patch similarity and correspondence: which patches, in this image and in others, look like this one.

Both read :class:`~dense.FeatureMap` tokens of one stored block (``layer=``, a block index as the FeatureMap stores
them; ``-1`` the last block) and compare them by cosine similarity, so images of any grids and aspect ratios compare
with each other. Pixels and patches are related by the FeatureMap's own geometry
(:meth:`~dense.FeatureMap.pixel_to_grid`, :meth:`~dense.FeatureMap.grid_to_pixel_xy`), maps are brought to image size
by :func:`dense.heatmap.to_image`.

    >>> sims = similarity_maps(fmap, (120, 40), [fmap, other])   # SimilarityMaps: one [gh, gw] map per target
    >>> sims.maps[1].shape, sims.peak_xy[1]                       # the best-matching pixel in `other`
    >>> sims.to_image(1)                                     # [H, W] of `other`
    >>> m = match(fmap, other)                                    # Matches: mutual nearest neighbours
    >>> m.points_xy_a, m.points_xy_b, m.scores                    # [M, 2], [M, 2], [M]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dense.errors import InputError
from dense.features import FeatureMap


def _unit_tokens(fmap: FeatureMap, layer: int) -> torch.Tensor:
    """Unit-normalized tokens of one block: ``[gh, gw, D]`` float32."""
    return F.normalize(fmap.layer_tokens((layer,)).float(), dim=-1)


def _check_comparable(fmaps: Sequence[FeatureMap], layer: int) -> None:
    """FeatureMaps compared with each other must come from one encoder and hold ``layer``."""
    fps = {f.encoder_spec.get("fingerprint") for f in fmaps} - {None}
    if len(fps) > 1:
        raise InputError(f"FeatureMaps from different encoders (fingerprints {sorted(fps)}) cannot be compared")
    for k, f in enumerate(fmaps):
        if not f.has_layers((layer,)):
            raise InputError(f"FeatureMap {k} holds blocks {list(f.layers)}, not block {layer}: extract it with "
                             f"layers including {layer}")


def check_point_xy(fmap: FeatureMap, point_xy) -> np.ndarray:
    """``point_xy`` as float64 ``[2]``; ``ValueError`` unless it is two finite numbers inside the image
    (``0 <= x <= W``, ``0 <= y <= H``; the far edges belong to the last patch)."""
    try:
        xy = np.asarray(point_xy, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"point_xy must be two numbers (x, y), got {point_xy!r}") from None
    if xy.shape != (2,) or not np.isfinite(xy).all():
        raise InputError(f"point_xy must be two finite numbers (x, y), got {point_xy!r}")
    H, W = fmap.image_hw
    if not (0 <= xy[0] <= W and 0 <= xy[1] <= H):
        raise InputError(f"point_xy ({xy[0]:g}, {xy[1]:g}) lies outside the image ({W} x {H} pixels)")
    return xy


def patch_vector(fmap: FeatureMap, point_xy, *, layer: int = -1) -> torch.Tensor:
    """The unit token ``[D]`` of the patch that covers pixel ``point_xy`` (original-image pixels) in block ``layer``."""
    i, j = fmap.pixel_to_grid(check_point_xy(fmap, point_xy))
    return _unit_tokens(fmap, layer)[int(i), int(j)]


@dataclass(frozen=True, eq=False)
class SimilarityMaps:
    """Cosine similarity of one patch to every patch of each target FeatureMap.

    Attributes:
        point_xy: float64 ``[2]``: the pixel that was asked about, in the source image.
        patch_ij: int64 ``[2]``: the source patch that covers it.
        maps: one float32 ``[gh_k, gw_k]`` map per target, cosine similarities in ``[-1, 1]``.
        targets: the target FeatureMaps (their geometry places the maps).
        layer: the block compared.
    """

    point_xy: np.ndarray
    patch_ij: np.ndarray
    maps: list[torch.Tensor]
    targets: list[FeatureMap]
    layer: int

    @property
    def peak_ij(self) -> np.ndarray:
        """int64 ``[K, 2]``: each map's most similar patch ``(i, j)`` (the first one on ties)."""
        out = [divmod(int(torch.argmax(m)), m.shape[1]) for m in self.maps]
        return np.array(out, dtype=np.int64).reshape(-1, 2)

    @property
    def peak_xy(self) -> np.ndarray:
        """float64 ``[K, 2]``: the centre of each map's most similar patch, in that target's pixels."""
        return np.array([f.grid_to_pixel_xy(ij) for f, ij in zip(self.targets, self.peak_ij, strict=True)]
                        ).reshape(-1, 2)

    @property
    def peak_scores(self) -> np.ndarray:
        """float64 ``[K]``: each map's largest similarity."""
        return np.array([float(m.max()) for m in self.maps], dtype=np.float64)

    def to_image(self, k: int, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Map ``k`` at its target's image size (or ``size_hw``): ``[H, W]``, bilinear, values at patch centres."""
        from dense.heatmap import to_image

        return to_image(self.maps[k][None], self.targets[k], size_hw)[0]  # [1, gh, gw] -> [1, H, W] -> [H, W]


def similarity_maps(source: FeatureMap, point_xy, targets: Sequence[FeatureMap] | None = None, *,
                    layer: int = -1) -> SimilarityMaps:
    """Cosine similarity of the patch under ``point_xy`` (``source`` image pixels) to every patch of ``targets``.

    ``targets``: FeatureMaps of the same encoder (any grids); None compares with ``source`` itself. ``layer``: a block
    every FeatureMap holds. Raises ``ValueError`` for a point outside the source image, a missing block or
    FeatureMaps of different encoders.
    """
    targets = [source] if targets is None else list(targets)
    _check_comparable([source, *targets], layer)
    xy = check_point_xy(source, point_xy)
    ij = source.pixel_to_grid(xy)
    query = _unit_tokens(source, layer)[int(ij[0]), int(ij[1])]  # [D]
    maps = []
    for t in targets:
        x = _unit_tokens(t, layer)  # [gh, gw, D]
        if x.shape[-1] != query.shape[0]:
            raise InputError(f"token dims differ: {query.shape[0]} (source) vs {x.shape[-1]} (target)")
        maps.append(x @ query)  # [gh, gw, D] @ [D] -> [gh, gw]
    return SimilarityMaps(point_xy=xy, patch_ij=np.asarray(ij, dtype=np.int64), maps=maps, targets=targets,
                          layer=layer)


@dataclass(frozen=True, eq=False)
class Matches:
    """Patch correspondences between image a and image b, best first.

    Attributes:
        points_xy_a: float64 ``[M, 2]``: patch centres in image a's pixels.
        points_xy_b: float64 ``[M, 2]``: their matches' centres in image b's pixels.
        scores: float64 ``[M]``: cosine similarities, descending.
        patches_ij_a: int64 ``[M, 2]``: the patches of a.
        patches_ij_b: int64 ``[M, 2]``: the patches of b.
    """

    points_xy_a: np.ndarray
    points_xy_b: np.ndarray
    scores: np.ndarray
    patches_ij_a: np.ndarray
    patches_ij_b: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def match(a: FeatureMap, b: FeatureMap, *, layer: int = -1, mutual: bool = True, min_score: float | None = None,
          max_matches: int | None = None) -> Matches:
    """Nearest-neighbour patch matches from ``a`` to ``b`` by cosine similarity of block ``layer``.

    Every patch of ``a`` is matched to its most similar patch of ``b``; with ``mutual`` (default) a match is kept only
    when that patch of ``b`` has the patch of ``a`` as its own nearest neighbour too (mutual nearest neighbours), which
    drops one-way matches such as many patches of a plain background all pointing at one patch. ``min_score`` drops
    matches below a cosine similarity; ``max_matches`` keeps the best ones.
    """
    _check_comparable([a, b], layer)
    xa, xb = _unit_tokens(a, layer), _unit_tokens(b, layer)  # [gha, gwa, D], [ghb, gwb, D]
    if xa.shape[-1] != xb.shape[-1]:
        raise InputError(f"token dims differ: {xa.shape[-1]} (a) vs {xb.shape[-1]} (b)")
    gha, gwa, D = xa.shape
    ghb, gwb, _ = xb.shape
    sim = xa.reshape(gha * gwa, D) @ xb.reshape(ghb * gwb, D).T  # [Na, D] @ [D, Nb] -> [Na, Nb]
    score, nn_ab = sim.max(dim=1)  # [Na]: each patch of a -> its nearest patch of b
    keep = torch.ones_like(score, dtype=torch.bool)
    if mutual:
        nn_ba = sim.argmax(dim=0)  # [Nb]: each patch of b -> its nearest patch of a
        keep &= nn_ba[nn_ab] == torch.arange(gha * gwa)
    if min_score is not None:
        keep &= score >= float(min_score)
    idx_a = torch.nonzero(keep).reshape(-1)
    order = torch.argsort(score[idx_a], descending=True, stable=True)
    idx_a = idx_a[order][:max_matches]
    idx_b = nn_ab[idx_a]
    ij_a = np.stack(np.divmod(idx_a.numpy(), gwa), axis=-1).astype(np.int64).reshape(-1, 2)  # flat -> [M, (i, j)]
    ij_b = np.stack(np.divmod(idx_b.numpy(), gwb), axis=-1).astype(np.int64).reshape(-1, 2)
    return Matches(points_xy_a=a.grid_to_pixel_xy(ij_a).reshape(-1, 2),
                   points_xy_b=b.grid_to_pixel_xy(ij_b).reshape(-1, 2), scores=score[idx_a].double().numpy(),
                   patches_ij_a=ij_a, patches_ij_b=ij_b)


__all__ = ["similarity_maps", "SimilarityMaps", "match", "Matches", "patch_vector", "check_point_xy"]

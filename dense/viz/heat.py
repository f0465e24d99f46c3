"""Heat figures: one rendering rule for scores over an image (:func:`heat_overlay`), its colour bar
(:func:`heat_ramp`), and the heatmap figures built on them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dense.errors import InputError
from dense.labels import as_numpy
from dense.preprocess import load_image
from dense.viz.layout import FONT_PT, LUMA, check_at_image_size, panel_grid, panel_title

# One rendering rule for every heat figure (and the local web page): the image in grey, its luminance squeezed into a
# narrow band around BAR_GREY, and the colour map on top with its opacity equal to the normalized score. A score of 1
# is the colour map's own colour, whatever lies below; a score of 0 is the grey image. The colour bar shows the same
# blend over BAR_GREY, so a bar colour and a drawn pixel of the same score differ by at most the band's half width
# times (1 - score): hot and cold never share a colour, and "nothing found" looks like the plain grey image.
HEAT_CMAP = "turbo"  # blue (low) -> green -> orange -> dark red (high); none of it is grey
GREY_BAND = (0.40, 0.70)  # the image's luminance 0..1 is drawn in this grey range (dimmed, low contrast)
BAR_GREY = 0.55  # the middle of GREY_BAND: what the colour bar's ramp is blended over


def _heat_rgb(t: np.ndarray, base: np.ndarray, cmap: str) -> np.ndarray:
    """Normalized scores ``t`` in [0, 1] over a grey ``base`` (same shape) -> float RGB ``[..., 3]`` in [0, 1]."""
    from matplotlib import colormaps

    colour = colormaps[cmap](np.asarray(t, np.float64))[..., :3]  # [...] -> [..., 3]; floats: never LUT indices
    alpha = np.asarray(t, np.float64)[..., None]
    return alpha * colour + (1.0 - alpha) * np.asarray(base, np.float64)[..., None]


def heat_overlay(image, scores, *, vmin: float = 0.0, vmax: float = 1.0, cmap: str = HEAT_CMAP) -> np.ndarray:
    """The heat rendering rule: ``scores [H, W]`` over the image -> uint8 ``[H, W, 3]``.

    ``image``: anything :func:`dense.preprocess.load_image` reads, or uint8 ``[H, W, 3]``; ``scores``: float
    ``[H, W]`` at the image's size. The image is drawn in grey (luminance squeezed into ``GREY_BAND``), the colour map
    over it with opacity ``t = clip((score - vmin) / (vmax - vmin), 0, 1)`` (NaN counts as ``vmin``). Every
    :mod:`dense.viz` heat figure uses it, and :func:`heat_ramp` gives its colour bar."""
    rgb = load_image(image)
    s = as_numpy(scores).astype(np.float64)
    if s.ndim != 2:
        raise InputError(f"scores must be one map [H, W], got shape {tuple(s.shape)}")
    check_at_image_size(rgb, s, "scores")
    if not vmax > vmin:
        raise InputError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    t = np.nan_to_num(np.clip((s - vmin) / (vmax - vmin), 0.0, 1.0), nan=0.0)  # [H, W]
    lo, hi = GREY_BAND
    base = lo + (hi - lo) * (rgb.astype(np.float64) @ LUMA / 255.0)  # [H, W, 3] -> [H, W]
    return np.round(255.0 * _heat_rgb(t, base, cmap)).astype(np.uint8)


def heat_ramp(cmap: str = HEAT_CMAP, n: int = 256):
    """The colours :func:`heat_overlay` draws for scores ``vmin..vmax`` over ``BAR_GREY``, as a colour map (for the
    colour bar): what the bar says is what the pixels show."""
    from matplotlib.colors import ListedColormap

    t = np.linspace(0.0, 1.0, n)
    return ListedColormap(_heat_rgb(t, np.full(n, BAR_GREY), cmap), name=f"{cmap}-over-grey")


def heatmap(image, scores, *, title: str | None = None, cmap: str = HEAT_CMAP, vmin: float = 0.0,
            vmax: float | None = 1.0, label: str = "probability"):
    """One heatmap ``[H, W]`` over the image (:func:`heat_overlay`), with its colour bar, on a fixed ``vmin..vmax``
    scale (probabilities: 0..1, so a map that finds nothing looks like the grey image). ``vmax=None``: the map's own
    maximum."""
    return heatmaps(image, as_numpy(scores)[None], [title or ""], cmap=cmap, vmin=vmin, vmax=vmax, label=label,
                    show_image=False)


def heatmaps(image, scores, queries: Sequence[str], *, cmap: str = HEAT_CMAP, vmin: float = 0.0,
             vmax: float | None = 1.0, label: str = "probability", show_image: bool = True):
    """The image, then one panel per query: ``scores [T, H, W]`` drawn by :func:`heat_overlay`, titled with the
    query and its peak.

    Every panel uses one fixed colour scale, ``vmin..vmax`` (default 0..1, for sigmoid probabilities), shown by one
    colour bar of exactly the drawn colours (:func:`heat_ramp`); pass ``vmax=None`` for raw similarities (then the
    largest score sets it)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = load_image(image)
    scores = as_numpy(scores).astype(np.float32)
    if scores.ndim != 3 or scores.shape[0] != len(queries):
        raise InputError(f"scores {scores.shape} do not match {len(queries)} queries")
    check_at_image_size(image, scores, "heatmaps")
    if vmax is None:
        vmax = float(scores.max()) if scores.size else 1.0
        vmax = vmax if vmax > vmin else vmin + 1.0
    fig, axes, w = panel_grid(len(queries) + show_image, image.shape[:2], extra_w=1.0)
    if show_image:
        axes[0].imshow(image)
        panel_title(axes[0], "image", w)
    for ax, s, q in zip(axes[show_image:], scores, queries, strict=True):
        ax.imshow(heat_overlay(image, s, vmin=vmin, vmax=vmax, cmap=cmap))
        panel_title(ax, f"{q} (max {s.max():.2f})" if q else f"max {s.max():.2f}", w)
    if len(queries):
        mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=heat_ramp(cmap))
        bar = fig.colorbar(mappable, ax=axes, shrink=0.8, aspect=25, pad=0.02)
        bar.set_label(f"{label} (drawn over the grey image)", fontsize=FONT_PT)
    return fig


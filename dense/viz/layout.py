"""Figure layout shared by every dense figure: the Agg figure Jupyter shows inline, panels sized by the image's aspect
ratio and wrapped into rows, titles wrapped to their panel."""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dense.errors import InputError

MAX_WIDTH_IN = 16.0  # no figure is wider than this (inches)
PANEL_AREA_IN2 = 12.0  # a panel's area before any clamping: 3.5 x 3.5 in for a square image
MAX_PANEL_H_IN = 6.0  # tall images: panels grow up to this height, then narrow
MIN_PANEL_W_IN = 1.6  # titles need some width, even over very tall images
FONT_PT = 11  # titles, labels and legends: readable at the default 100 dpi
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights: grey images, text colour over a swatch

class DenseFigure(Figure):
    """A Figure on an Agg canvas that Jupyter displays as a PNG (``_repr_png_``), whatever the kernel's backend."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)  # a real renderer: text extents can be measured before saving

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def check_at_image_size(image: np.ndarray, maps: np.ndarray, what: str) -> None:
    if tuple(maps.shape[-2:]) != tuple(image.shape[:2]):
        raise InputError(f"{what} {tuple(maps.shape)} is not at the image size {tuple(image.shape[:2])}; "
                         f"upsample it first (dense.heatmap.to_image)")


def panel_layout(n_panels: int, image_hw: tuple[int, int], *, extra_w: float = 0.0,
                 max_width: float = MAX_WIDTH_IN) -> tuple[int, int, float, float]:
    """``(rows, cols, panel_w, panel_h)`` in inches for ``n_panels`` images of ``image_hw``: each panel has the
    image's aspect ratio; the columns (plus ``extra_w`` for a colour bar or legend) fit in ``max_width``; of the
    possible column counts, the one with the largest panels wins, each extra row costing 20%."""
    H, W = max(int(image_hw[0]), 1), max(int(image_hw[1]), 1)
    aspect = W / H
    w0 = math.sqrt(PANEL_AREA_IN2 * aspect)
    w0 = min(w0, MAX_PANEL_H_IN * aspect)  # tall images: cap the height
    w0 = max(w0, MIN_PANEL_W_IN)
    best, best_score = None, -1.0
    for cols in range(n_panels, 0, -1):
        rows = math.ceil(n_panels / cols)
        w = min(w0, (max_width - extra_w) / cols)
        score = w * 0.8 ** (rows - 1)  # another row only for clearly larger panels
        if score > best_score + 1e-9:
            best, best_score = (rows, cols, w, w / aspect), score
    rows, cols, w, h = best
    return rows, cols, w, min(h, MAX_PANEL_H_IN)  # very tall images: narrower than their panel, never taller


def panel_grid(n_panels: int, image_hw: tuple[int, int], *, extra_w: float = 0.0):
    """A constrained-layout figure of ``n_panels`` image panels (axes off), unused grid cells removed."""
    rows, cols, w, h = panel_layout(n_panels, image_hw, extra_w=extra_w)
    title_h = 0.45  # room for a one- or two-line title per row
    fig = DenseFigure(figsize=(cols * w + extra_w + 0.2, rows * (h + title_h) + 0.2), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    axes = axes[:n_panels]
    for ax in axes:
        ax.set_axis_off()
    return fig, axes, w


def panel_title(ax, text: str, panel_w: float, *, fontsize: float = FONT_PT, **kwargs) -> None:
    """A title wrapped to the panel's width (about 0.55 em per character)."""
    chars = max(10, int(panel_w * 72 / (fontsize * 0.55)))
    ax.set_title(textwrap.fill(text, chars), fontsize=fontsize, **kwargs)


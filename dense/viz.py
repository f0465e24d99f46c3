"""Matplotlib overlays: heatmaps over an image, label maps with a legend, boxes and points, PCA colours.

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg backend (no display, no pyplot state);
save it with ``fig.savefig(path)``. In Jupyter (and under nbclient / nbconvert) the figure shows inline as a PNG, with
any backend, because it has a ``_repr_png_``. Images are uint8 ``[H, W, 3]`` (anything
:func:`dense.preprocess.load_image` reads is accepted); heatmaps and label maps are at the image's size (use
:func:`dense.heatmap.to_image_size` first).

Panels are sized by the image's aspect ratio and wrap into rows so a figure stays at most ``MAX_WIDTH_IN`` wide.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dense.labels import IGNORE, as_numpy
from dense.preprocess import load_image

MAX_WIDTH_IN = 16.0  # no figure is wider than this (inches)
PANEL_AREA_IN2 = 12.0  # a panel's area before any clamping: 3.5 x 3.5 in for a square image
MAX_PANEL_H_IN = 6.0  # tall images: panels grow up to this height, then narrow
MIN_PANEL_W_IN = 1.6  # titles need some width, even over very tall images
FONT_PT = 11  # titles, labels and legends: readable at the default 100 dpi
IOU_HIT = 0.5  # a predicted box is a hit at IoU >= this (Acc@0.5)


class DenseFigure(Figure):
    """A Figure on an Agg canvas that Jupyter displays as a PNG (``_repr_png_``), whatever the kernel's backend."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)  # a real renderer: text extents can be measured before saving

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _check_hw(image: np.ndarray, maps: np.ndarray, what: str) -> None:
    if tuple(maps.shape[-2:]) != tuple(image.shape[:2]):
        raise ValueError(f"{what} {tuple(maps.shape)} is not at the image size {tuple(image.shape[:2])}; "
                         f"upsample it first (dense.heatmap.to_image_size)")


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


def _figure(n_panels: int, image_hw: tuple[int, int], *, extra_w: float = 0.0):
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


def _title(ax, text: str, panel_w: float, *, fontsize: float = FONT_PT, **kwargs) -> None:
    """A title wrapped to the panel's width (about 0.55 em per character)."""
    chars = max(10, int(panel_w * 72 / (fontsize * 0.55)))
    ax.set_title(textwrap.fill(text, chars), fontsize=fontsize, **kwargs)


# -- heatmaps ---------------------------------------------------------------------------------------------------------


def heatmap(image, scores, *, title: str | None = None, alpha: float = 0.5, cmap: str = "jet",
            vmin: float | None = 0.0, vmax: float | None = 1.0, label: str = "probability"):
    """One heatmap ``[H, W]`` over the image, with a colour bar, on a fixed ``vmin..vmax`` scale (probabilities:
    0..1, so a map that finds nothing looks like nothing). ``vmax=None``: the map's own maximum."""
    return heatmaps(image, as_numpy(scores)[None], [title or ""], alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax,
                    label=label, show_image=False)


def heatmaps(image, scores, queries: Sequence[str], *, alpha: float = 0.5, cmap: str = "jet",
             vmin: float | None = 0.0, vmax: float | None = 1.0, label: str = "probability",
             show_image: bool = True):
    """The image, then one panel per query: ``scores [T, H, W]`` over the image, titled with the query and its peak.

    Every panel uses one fixed colour scale, ``vmin..vmax`` (default 0..1, for sigmoid probabilities), shown by one
    colour bar; pass ``vmax=None`` for raw similarities (then the largest score sets it)."""
    image = load_image(image)
    scores = as_numpy(scores).astype(np.float32)
    if scores.ndim != 3 or scores.shape[0] != len(queries):
        raise ValueError(f"scores {scores.shape} do not match {len(queries)} queries")
    _check_hw(image, scores, "heatmaps")
    if vmax is None:
        vmax = float(scores.max()) if scores.size else 1.0
    fig, axes, w = _figure(len(queries) + show_image, image.shape[:2], extra_w=1.0)
    if show_image:
        axes[0].imshow(image)
        _title(axes[0], "image", w)
    im = None
    for ax, s, q in zip(axes[show_image:], scores, queries, strict=True):
        ax.imshow(image)
        im = ax.imshow(s, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
        _title(ax, f"{q} (max {s.max():.2f})" if q else f"max {s.max():.2f}", w)
    if im is not None:
        bar = fig.colorbar(im, ax=axes, shrink=0.8, aspect=25, pad=0.02)
        bar.solids.set_alpha(1.0)
        bar.set_label(label, fontsize=FONT_PT)
    return fig


# -- label maps -------------------------------------------------------------------------------------------------------

# Colour words a class name may contain, and how to draw them (tab10 shades where matplotlib has one: softer than pure
# RGB, and distinct from each other).
_COLOUR_WORDS: dict[str, tuple[float, float, float]] = {
    "red": (0.84, 0.15, 0.16), "green": (0.17, 0.63, 0.17), "blue": (0.12, 0.40, 0.85),
    "yellow": (0.95, 0.82, 0.10), "orange": (1.00, 0.50, 0.05), "purple": (0.58, 0.40, 0.74),
    "violet": (0.58, 0.40, 0.74), "pink": (0.97, 0.51, 0.75), "brown": (0.55, 0.34, 0.29),
    "grey": (0.50, 0.50, 0.50), "gray": (0.50, 0.50, 0.50), "black": (0.10, 0.10, 0.10),
    "white": (0.97, 0.97, 0.97), "cyan": (0.09, 0.75, 0.81), "magenta": (0.85, 0.10, 0.75),
    "gold": (0.85, 0.65, 0.13), "olive": (0.50, 0.50, 0.10), "teal": (0.0, 0.50, 0.50),
    "navy": (0.0, 0.0, 0.50), "silver": (0.75, 0.75, 0.75), "beige": (0.90, 0.85, 0.70),
}
_SHADES = (0.0, -0.35, 0.35, -0.55, 0.55, -0.2, 0.2)  # <0 darker, >0 lighter: classes sharing a colour word


def _shade(rgb, f: float) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb * (1 + f) if f < 0 else rgb + (1 - rgb) * f


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """``[K, 3]`` RGB in [0, 1], one per class: the colour a name mentions ("green triangle" -> green; classes that
    share a colour word get darker and lighter shades of it), otherwise a distinct tab20 colour not already used."""
    from matplotlib import colormaps

    colours: list[np.ndarray | None] = [None] * len(class_names)
    seen: dict[str, int] = {}
    for k, name in enumerate(class_names):
        word = next((w for w in re.findall(r"[a-z]+", str(name).lower()) if w in _COLOUR_WORDS), None)
        if word is not None:
            n = seen.get(word, 0)
            seen[word] = n + 1
            colours[k] = _shade(_COLOUR_WORDS[word], _SHADES[n % len(_SHADES)])
    tab = colormaps["tab20"]
    spare = [np.array(tab(i)[:3]) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for k in range(len(class_names)):
        if colours[k] is not None:
            continue
        used = [c for c in colours if c is not None]
        far = [c for c in spare if all(np.abs(c - u).sum() > 0.25 for u in used)]
        colours[k] = (far or spare)[0]
        spare = [c for c in spare if c is not colours[k]] or spare
    return np.array(colours, np.float64).reshape(-1, 3)


def _paint(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Classes painted in their colours over a light grey copy of the image; background (0) and ignore stay grey."""
    grey = (image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0)[..., None]  # [H, W, 1]
    base = 0.35 + 0.6 * np.repeat(grey, 3, axis=2)  # lightened, so painted colours stand out
    painted = (labels > 0) & (labels <= len(colours))
    rgb = colours[np.clip(labels - 1, 0, len(colours) - 1)]  # [H, W] -> [H, W, 3]
    return np.where(painted[..., None], (1 - alpha) * base + alpha * rgb, base)


def label_map(image, labels, class_names: Sequence[str], *, gt=None, alpha: float = 0.85,
              background: str = "background", ignore_index: int = IGNORE, titles: Sequence[str] | None = None):
    """The image, the ground truth ``gt`` (when given), and ``labels [H, W]`` side by side.

    Label 0 is background (left unpainted: the image in grey), ``k + 1`` is ``class_names[k]``, ``ignore_index`` is
    unpainted. Colours follow colour words in the names (:func:`class_colours`); the legend lists the classes present
    in the maps shown."""
    image = load_image(image)
    maps = [as_numpy(labels).astype(np.int64)]
    if gt is not None:
        maps.insert(0, as_numpy(gt).astype(np.int64))
    for m, what in zip(maps, ["ground truth", "label map"] if gt is not None else ["label map"], strict=True):
        _check_hw(image, m, what)
        valid = m[m != ignore_index]
        if valid.size and (valid.min() < 0 or valid.max() > len(class_names)):
            raise ValueError(f"{what} values {valid.min()}..{valid.max()} outside 0..{len(class_names)}")
    if titles is None:
        titles = ["ground truth", "prediction"] if gt is not None else ["labels"]
    colours = class_colours(class_names)
    fig, axes, w = _figure(1 + len(maps), image.shape[:2], extra_w=2.4)
    axes[0].imshow(image)
    _title(axes[0], "image", w)
    for ax, m, t in zip(axes[1:], maps, titles, strict=True):
        ax.imshow(_paint(image, np.where(m == ignore_index, 0, m), colours, alpha))
        _title(ax, t, w)
    from matplotlib.patches import Patch

    values = {int(v) for m in maps for v in np.unique(m)}
    handles = [Patch(facecolor=colours[k - 1], edgecolor="black", linewidth=0.5, label=class_names[k - 1])
               for k in sorted(values - {0, ignore_index})]
    if values & {0, ignore_index}:  # a neutral swatch: background is the image itself, in grey
        handles.append(Patch(facecolor=(0.75, 0.75, 0.75), edgecolor="black", linewidth=0.5,
                             label=f"{background} (unpainted)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=FONT_PT, frameon=False)
    return fig


# -- boxes ------------------------------------------------------------------------------------------------------------


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _place_labels(fig, ax, texts) -> None:
    """Move each label (an annotation anchored at its box) up or down in steps of its own height until its rendered
    extent overlaps no label placed before it (nor the title or legend) and stays inside the figure."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # settle the constrained layout before measuring
    placed = [a.get_window_extent(renderer) for a in (ax.title, ax.get_legend()) if a is not None and a.get_visible()
              and (a is not ax.title or a.get_text())]  # labels keep off the title and the legend too
    for t in texts:
        ext = t.get_window_extent(renderer)
        step = ext.height * 72 / fig.dpi + 1  # points
        x, y0 = t.xyann
        first_free = None
        for k in range(80):
            dy = (k + 1) // 2 * step * (1 if k % 2 else -1)  # 0, +1, -1, +2, -2 ... steps
            t.xyann = (x, y0 + dy)
            ext = t.get_window_extent(renderer)
            if not any(_overlaps(ext, p) for p in placed):
                first_free = first_free or (x, y0 + dy)
                if fig.bbox.contains(ext.x0, ext.y0) and fig.bbox.contains(ext.x1, ext.y1):
                    break
        else:
            if first_free is not None:  # nowhere free inside the figure: free of overlaps, outside it
                t.xyann = first_free
        placed.append(t.get_window_extent(renderer))


def boxes(image, boxes_xyxy, labels: Sequence[str] | None = None, *, points_xy=None, gt_boxes_xyxy=None,
          colours: Sequence | None = None):
    """Boxes ``[N, 4]`` (``x0, y0, x1, y1``, original-image pixels), optional points ``[N, 2]`` and ground-truth
    boxes ``[N, 4]`` over the image.

    With ground truth, each prediction is marked hit (IoU >= 0.5, solid box) or miss (dashed), its ground truth is
    drawn dotted in the same colour, and the title counts the hits. Labels never overprint each other."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    image = load_image(image)
    b = as_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)  # -> [N, 4]
    gt = None if gt_boxes_xyxy is None else as_numpy(gt_boxes_xyxy).astype(np.float64).reshape(-1, 4)  # -> [N, 4]
    if gt is not None and len(gt) != len(b):
        raise ValueError(f"{len(gt)} ground-truth boxes for {len(b)} predicted boxes")
    if labels is not None and len(labels) != len(b):
        raise ValueError(f"{len(labels)} labels for {len(b)} boxes")
    if colours is None:  # colour words in the expressions, as in label maps ("the red circle" drawn red)
        colours = class_colours(labels if labels is not None else [""] * len(b))
    halo = [patheffects.withStroke(linewidth=4.5, foreground="white")]  # visible on any background
    H, W = image.shape[:2]
    rows, cols, w, h = panel_layout(1, (H, W), max_width=10.0)
    # one panel, at least 5.5 in on its long side and 4.5 in wide, so labels and the legend fit beside the image
    scale = max(1.0, 5.5 / max(w, h), 4.5 / w)
    fig_w = w * scale + 0.3
    legend_cols = 3 if fig_w >= 5.5 else 1
    fig = DenseFigure(figsize=(fig_w, h * scale + (0.8 if legend_cols == 3 else 1.3)), layout="constrained")
    wrap = max(12, int(0.8 * fig_w * 72 / (FONT_PT * 0.6)))  # characters per label line
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.imshow(image)
    hits = []
    texts = []
    for k, (x0, y0, x1, y1) in enumerate(b):
        c = colours[k]
        hit = None if gt is None else _iou_xyxy(b[k], gt[k]) >= IOU_HIT
        if gt is not None:
            g = gt[k]
            ax.add_patch(Rectangle((g[0], g[1]), g[2] - g[0], g[3] - g[1], fill=False, edgecolor=c, linewidth=2,
                                   linestyle=":", path_effects=halo))
            hits.append(hit)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=2.5,
                               linestyle="-" if hit in (None, True) else "--", path_effects=halo))
        if labels is not None:
            text = labels[k] if gt is None else f"{labels[k]}: {'hit' if hit else 'miss'} " \
                                                 f"(IoU {_iou_xyxy(b[k], gt[k]):.2f})"
            right = x0 > W / 2  # anchor labels of right-hand boxes at their right edge, so they stay in the image
            t = ax.annotate(textwrap.fill(text, wrap), xy=(x1 if right else x0, y0), xytext=(0, 0),
                            textcoords="offset points",
                            ha="right" if right else "left", va="bottom", fontsize=FONT_PT,
                            color="black" if np.dot(c, (0.299, 0.587, 0.114)) > 0.5 else "white",
                            bbox=dict(facecolor=c, alpha=0.85, pad=1.5, linewidth=0), annotation_clip=False)
            t.set_in_layout(False)  # labels must not reshape the layout they are placed in
            texts.append(t)
    if points_xy is not None:
        p = as_numpy(points_xy).astype(np.float64).reshape(-1, 2)  # -> [N, 2]
        ax.scatter(p[:, 0], p[:, 1], marker="*", s=220, c=[colours[k % len(colours)] for k in range(len(p))],
                   edgecolors="white", linewidths=1.2, zorder=3)
    if gt is not None:
        _title(ax, f"{sum(hits)}/{len(hits)} hits (IoU >= {IOU_HIT})", w * scale)
        ax.legend(handles=[Line2D([], [], color="grey", lw=2.5, label="predicted: hit"),
                           Line2D([], [], color="grey", lw=2.5, ls="--", label="predicted: miss"),
                           Line2D([], [], color="grey", lw=2, ls=":", label="ground truth")],
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=legend_cols, fontsize=FONT_PT - 1, frameon=False)
    if texts:
        _place_labels(fig, ax, texts)
    return fig


# -- PCA --------------------------------------------------------------------------------------------------------------


def pca(fmap, image=None):
    """A FeatureMap's first three principal components as colours (next to the image when given)."""
    rgb = fmap.pca_rgb(size_hw=fmap.image_hw)
    fig, axes, w = _figure(2 if image is not None else 1, fmap.image_hw)
    if image is not None:
        axes[0].imshow(load_image(image))
        _title(axes[0], "image", w)
    axes[-1].imshow(rgb)
    _title(axes[-1], "PCA of tokens", w)
    return fig

"""Matplotlib overlays: heatmaps over an image, label maps with a legend, boxes and points, PCA colours.

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg backend (no display, no pyplot state);
save it with ``fig.savefig(path)``. In Jupyter (and under nbclient / nbconvert) the figure shows inline as a PNG, with
any backend, because it has a ``_repr_png_``. Images are uint8 ``[H, W, 3]`` (anything
:func:`dense.preprocess.load_image` reads is accepted); heatmaps and label maps are at the image's size (use
:func:`dense.heatmap.to_image` first).

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

# One rendering rule for every heat figure (and the local web page): the image in grey, its luminance squeezed into a
# narrow band around BAR_GREY, and the colour map on top with its opacity equal to the normalized score. A score of 1
# is the colour map's own colour, whatever lies below; a score of 0 is the grey image. The colour bar shows the same
# blend over BAR_GREY, so a bar colour and a drawn pixel of the same score differ by at most the band's half width
# times (1 - score): hot and cold never share a colour, and "nothing found" looks like the plain grey image.
HEAT_CMAP = "turbo"  # blue (low) -> green -> orange -> dark red (high); none of it is grey
GREY_BAND = (0.40, 0.70)  # the image's luminance 0..1 is drawn in this grey range (dimmed, low contrast)
BAR_GREY = 0.55  # the middle of GREY_BAND: what the colour bar's ramp is blended over
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights


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
        raise ValueError(f"scores must be one map [H, W], got shape {tuple(s.shape)}")
    _check_hw(rgb, s, "scores")
    if not vmax > vmin:
        raise ValueError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    t = np.nan_to_num(np.clip((s - vmin) / (vmax - vmin), 0.0, 1.0), nan=0.0)  # [H, W]
    lo, hi = GREY_BAND
    base = lo + (hi - lo) * (rgb.astype(np.float64) @ _LUMA / 255.0)  # [H, W, 3] -> [H, W]
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
        raise ValueError(f"scores {scores.shape} do not match {len(queries)} queries")
    _check_hw(image, scores, "heatmaps")
    if vmax is None:
        vmax = float(scores.max()) if scores.size else 1.0
        vmax = vmax if vmax > vmin else vmin + 1.0
    fig, axes, w = _figure(len(queries) + show_image, image.shape[:2], extra_w=1.0)
    if show_image:
        axes[0].imshow(image)
        _title(axes[0], "image", w)
    for ax, s, q in zip(axes[show_image:], scores, queries, strict=True):
        ax.imshow(heat_overlay(image, s, vmin=vmin, vmax=vmax, cmap=cmap))
        _title(ax, f"{q} (max {s.max():.2f})" if q else f"max {s.max():.2f}", w)
    if len(queries):
        mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=heat_ramp(cmap))
        bar = fig.colorbar(mappable, ax=axes, shrink=0.8, aspect=25, pad=0.02)
        bar.set_label(f"{label} (drawn over the grey image)", fontsize=FONT_PT)
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
SHADE_LIGHTNESS = (0.22, 0.82)  # classes sharing a colour word spread evenly over this HLS lightness range


def _shades(rgb, n: int) -> list[np.ndarray]:
    """``n`` shades of one colour, as far apart in lightness as ``SHADE_LIGHTNESS`` allows (hue and saturation kept);
    the one nearest the colour itself first, so a lone class keeps its plain colour."""
    import colorsys

    if n == 1:
        return [np.asarray(rgb, np.float64)]
    h, light, sat = colorsys.rgb_to_hls(*rgb)
    levels = np.linspace(*SHADE_LIGHTNESS, n)
    order = np.argsort(np.abs(levels - light), kind="stable")
    return [np.array(colorsys.hls_to_rgb(h, float(levels[k]), sat)) for k in order]


def _colour_word(name: str) -> str | None:
    return next((w for w in re.findall(r"[a-z]+", str(name).lower()) if w in _COLOUR_WORDS), None)


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """``[K, 3]`` RGB in [0, 1], one per class: the colour a name mentions ("green triangle" -> green), otherwise a
    distinct tab20 colour not already used. Classes that share a colour word (red circle, red square, red star) get
    shades of it spread evenly in lightness (:data:`SHADE_LIGHTNESS`): four reds stay at least 0.3 apart in RGB."""
    from matplotlib import colormaps

    colours: list[np.ndarray | None] = [None] * len(class_names)
    words = [_colour_word(n) for n in class_names]
    shades = {w: _shades(_COLOUR_WORDS[w], words.count(w)) for w in set(words) - {None}}
    for k, word in enumerate(words):
        if word is not None:
            colours[k] = shades[word].pop(0)
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


PAINT_BASE = (0.35, 0.95)  # label maps: the image's luminance 0..1 drawn in this (light) grey range
IGNORE_RGB = (0.25, 0.25, 0.25)  # the dark stripes over ignore / crowd pixels


def _painted(colours: np.ndarray, alpha: float) -> np.ndarray:
    """The colour a class shows with, over the middle of the grey base: its legend swatch."""
    return alpha * np.asarray(colours, np.float64) + (1 - alpha) * float(np.mean(PAINT_BASE))


def _paint(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float,
           ignore: np.ndarray | None = None) -> np.ndarray:
    """Classes painted in their colours over a light grey copy of the image; background (0) stays grey; ``ignore``
    (bool ``[H, W]``) gets dark diagonal stripes."""
    lo, hi = PAINT_BASE
    grey = (image.astype(np.float64) @ _LUMA / 255.0)[..., None]  # [H, W, 3] -> [H, W, 1]
    base = lo + (hi - lo) * np.repeat(grey, 3, axis=2)  # lightened, so painted colours stand out
    painted = (labels > 0) & (labels <= len(colours))
    rgb = colours[np.clip(labels - 1, 0, len(colours) - 1)]  # [H, W] -> [H, W, 3]
    out = np.where(painted[..., None], (1 - alpha) * base + alpha * rgb, base)
    if ignore is not None and ignore.any():
        H, W = labels.shape
        period = max(4, round(min(H, W) / 16))  # a few stripes across even a small region
        yy, xx = np.mgrid[:H, :W]
        stripe = ((xx + yy) // max(1, period // 2)) % 2 == 0  # [H, W]
        out = np.where((ignore & stripe)[..., None], np.asarray(IGNORE_RGB), out)
    return out


def paint_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, *, alpha: float = 0.85) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``labels [H, W]`` (0 background, ``k + 1`` class ``k``) painted in ``colours`` over a light
    grey copy of ``image``, as :func:`label_map` draws them; background stays the grey image."""
    return (_paint(image, labels, colours, alpha) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def label_swatches(colours: np.ndarray, *, alpha: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """The legend colours of :func:`paint_labels`, RGB in [0, 1]: ``(classes [K, 3], background [3])``, each as
    painted over the middle of the grey base."""
    return _painted(colours, alpha), np.full(3, float(np.mean(PAINT_BASE)))


def label_map(image, labels, class_names: Sequence[str], *, gt=None, alpha: float = 0.85,
              background: str = "background", ignore_index: int = IGNORE, titles: Sequence[str] | None = None):
    """The image, the ground truth ``gt`` (when given), and ``labels [H, W]`` side by side.

    Label 0 is background (left unpainted: the image in grey), ``k + 1`` is ``class_names[k]``, ``ignore_index``
    (ignore / crowd regions, not scored) is striped dark grey. Colours follow colour words in the names
    (:func:`class_colours`); the legend lists the classes present in the maps shown, with the colour they are painted
    in, then background and ignore when present."""
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
        ignored = m == ignore_index
        ax.imshow(_paint(image, np.where(ignored, 0, m), colours, alpha, ignore=ignored))
        _title(ax, t, w)
    from matplotlib.patches import Patch

    values = {int(v) for m in maps for v in np.unique(m)}
    swatches = _painted(colours, alpha)
    handles = [Patch(facecolor=swatches[k - 1], edgecolor="black", linewidth=0.5, label=class_names[k - 1])
               for k in sorted(values - {0, ignore_index})]
    if 0 in values:  # a neutral swatch: background is the image itself, in grey
        handles.append(Patch(facecolor=(np.mean(PAINT_BASE),) * 3, edgecolor="black", linewidth=0.5,
                             label=f"{background} (unpainted)"))
    if ignore_index in values:  # the same stripes as the map
        handles.append(Patch(facecolor=(np.mean(PAINT_BASE),) * 3, edgecolor=IGNORE_RGB, hatch="////",
                             linewidth=0.5, label="ignore / crowd (not scored)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=FONT_PT, frameon=False)
    return fig


# -- boxes ------------------------------------------------------------------------------------------------------------

BOX_PANEL_IN = (9.0, 4.8)  # a box figure's image panel fills this (w, h) box at the image's aspect ratio ...
BOX_FIG_MAX_H_IN = 6.4  # ... and the panel gives up height to the title, legend and notes so the figure stays this
# tall: at the demo page's 90 dpi that is under its 600 px image height, so 11 pt labels are never scaled down
MIN_FIG_W_IN = 4.6  # titles, legends and notes need this much width, even beside a narrow image
MARKER_PT2 = 220  # the point's star marker (area in pt^2)
LABEL_PAD_PT = 2.0  # the coloured box around a label's text
LABEL_GAP_PT = 1.5  # free space kept between labels, and between a label and a marker
MIN_LABEL_CHARS = 10  # a panel narrower than this many characters gets numbered tags and a key beside it


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def label_extent(text, renderer):
    """A label's window extent including its coloured box (what a reader sees as the label)."""
    from matplotlib.transforms import Bbox

    ext = text.get_window_extent(renderer)
    patch = text.get_bbox_patch()
    if patch is None:
        return ext
    pad = LABEL_PAD_PT * text.figure.dpi / 72
    return Bbox.from_extents(ext.x0 - pad, ext.y0 - pad, ext.x1 + pad, ext.y1 + pad)


def marker_extents(ax) -> list:
    """The window extent of every point marker drawn by :func:`boxes` on ``ax`` (one per point)."""
    from matplotlib.transforms import Bbox

    out = []
    for coll in ax.collections:
        if coll.get_gid() != "dense-points":
            continue
        half = (math.sqrt(MARKER_PT2) / 2 + 1.2) * ax.figure.dpi / 72  # the star's radius plus its white edge
        for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
            out.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    return out


def _place_labels(fig, ax, texts, anchors_px) -> bool:
    """Put each label inside the axes, free of every label placed before it and of every marker, as near to its box
    as possible (``anchors_px``: the box ``(x0, y0, x1, y1)`` in display pixels, y up). Candidate places: rows in steps
    of the label's height over the whole panel, aligned to the box's left or right edge or spread across the panel;
    the nearest free one to the box wins (just above it, when free; a place over the box's own inside costs four
    rows, one over any box two more). Returns False when some label found no free place."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer)
    gap = LABEL_GAP_PT * fig.dpi / 72
    pad = LABEL_PAD_PT * fig.dpi / 72
    placed = [b.padded(gap) for b in marker_extents(ax)]
    to_axes = ax.transAxes.inverted()
    for t, (bx0, by0, bx1, by1) in zip(texts, anchors_px, strict=True):
        t.set_position((0.0, 0.0))
        ext = t.get_window_extent(renderer)
        w, h = ext.width + 2 * pad, ext.height + 2 * pad
        if w > axbox.width or h > axbox.height:
            return False
        step = h + gap
        xs = np.clip([bx0, bx1 - w, *np.linspace(axbox.x0, axbox.x1 - w, 9)], axbox.x0, axbox.x1 - w)
        rows = int(axbox.height / step) + 2
        ys = np.clip(by1 + step * np.arange(-rows, rows + 1), axbox.y0, axbox.y1 - h)
        cx, cy = np.meshgrid(xs, ys)  # [rows, xs]: lower-left corners of the candidates
        cx, cy = cx.ravel(), cy.ravel()
        dx = np.maximum.reduce([bx0 - (cx + w), cx - bx1, np.zeros_like(cx)])  # rectangle-to-box distance
        dy = np.maximum.reduce([by0 - (cy + h), cy - by1, np.zeros_like(cy)])
        inside = (dx == 0) & (dy == 0) & (cy < by1 - 0.5)  # over the box's contents
        covers = sum(((cx < ox1) & (ox0 < cx + w) & (cy < oy1) & (oy0 < cy + h)).astype(float)
                     for ox0, oy0, ox1, oy1 in anchors_px)  # how many boxes (objects) the label would hide
        cost = np.hypot(dx, dy) + 4 * step * inside + 2 * step * covers + 1e-3 * np.abs(cy - by1)
        spot = None
        for i in np.argsort(cost, kind="stable"):
            cand = Bbox.from_extents(cx[i], cy[i], cx[i] + w, cy[i] + h)
            if not any(_overlaps(cand, p) for p in placed):
                spot = cand
                break
        if spot is None:
            return False
        t.set_position(to_axes.transform((spot.x0 + pad, spot.y0 + pad)))
        placed.append(spot.padded(gap))
    return True


def boxes(image, boxes_xyxy, labels: Sequence[str] | None = None, *, points_xy=None, gt_boxes_xyxy=None,
          colours: Sequence | None = None, scores: Sequence[float] | None = None,
          found: Sequence[bool] | None = None, found_threshold: float | None = None):
    """Boxes ``[N, 4]`` (``x0, y0, x1, y1``, original-image pixels), optional points ``[N, 2]`` and ground-truth
    boxes ``[N, 4]`` over the image, each box labelled (with its score when ``scores`` is given).

    ``found`` (bool ``[N]``): a box that was not found is not drawn (nor its point); a note under the panel lists it
    with its score (and ``found_threshold`` when given). With ground truth, each prediction is marked hit (IoU >= 0.5,
    solid box) or miss (dashed; a not-found answer is a miss), its ground truth is drawn dotted in the same colour,
    and the title counts the hits.

    Labels stay inside the panel and never cover each other or a point: each goes as near its box as a free place
    allows (a thin line joins it to its box when it had to move away). When they cannot all fit, or the panel is too
    narrow for words, the boxes get numbered tags and the full labels a key beside the panel."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    image = load_image(image)
    b = as_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)  # -> [N, 4]
    n = len(b)
    gt = None if gt_boxes_xyxy is None else as_numpy(gt_boxes_xyxy).astype(np.float64).reshape(-1, 4)  # -> [N, 4]
    for name, given in (("ground-truth boxes", gt), ("labels", labels), ("scores", scores), ("found", found)):
        if given is not None and len(given) != n:
            raise ValueError(f"{len(given)} {name} for {n} boxes")
    pts = None if points_xy is None else as_numpy(points_xy).astype(np.float64).reshape(-1, 2)  # -> [N, 2]
    if pts is not None and len(pts) != n:
        raise ValueError(f"{len(pts)} points for {n} boxes")
    shown = np.ones(n, bool) if found is None else np.asarray(found, bool)
    if colours is None:  # colour words in the expressions, as in label maps ("the red circle" drawn red)
        colours = class_colours(labels if labels is not None else [""] * n)
    halo = [patheffects.withStroke(linewidth=4.5, foreground="white")]  # visible on any background
    H, W = image.shape[:2]
    hits = [None if gt is None else (bool(shown[k]) and _iou_xyxy(b[k], gt[k]) >= IOU_HIT) for k in range(n)]

    def label_text(k: int) -> str:
        text = labels[k] if labels is not None else f"#{k + 1}"
        if scores is not None:
            text += f" ({scores[k]:.2f})"
        if gt is not None and shown[k]:
            text += f": {'hit' if hits[k] else 'miss'} (IoU {_iou_xyxy(b[k], gt[k]):.2f})"
        return text

    missing = [k for k in range(n) if not shown[k]]
    note = ""
    if missing:
        below = "" if found_threshold is None else f", score below {found_threshold:.2f}"
        note = f"not found{below}: " + "; ".join(
            (labels[k] if labels is not None else f"#{k + 1}") + (f" ({scores[k]:.2f})" if scores is not None else "")
            for k in missing)
        note = textwrap.fill(note, int(MIN_FIG_W_IN * 72 / (FONT_PT * 0.55)))  # the most lines it can take
    legend_cols = 3 if min(BOX_PANEL_IN[0], W * BOX_PANEL_IN[1] / H) >= 5.2 else 1
    extras = 0.3 + (0.4 + 0.22 * (4 - legend_cols) if gt is not None else 0.0)  # margins; the title and legend
    extras += 0.2 * (note.count("\n") + 1) + 0.15 if note else 0.0
    scale = min(BOX_PANEL_IN[0] / W, min(BOX_PANEL_IN[1], BOX_FIG_MAX_H_IN - extras) / H)
    w, h = W * scale, H * scale  # the panel, inches
    fig_w = max(w, MIN_FIG_W_IN) + 0.3
    fig = DenseFigure(figsize=(fig_w, h + extras), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.imshow(image)
    for k in range(n):
        c = colours[k]
        if gt is not None:
            g = gt[k]
            ax.add_patch(Rectangle((g[0], g[1]), g[2] - g[0], g[3] - g[1], fill=False, edgecolor=c, linewidth=2,
                                   linestyle=":", path_effects=halo))
        if shown[k]:
            x0, y0, x1, y1 = b[k]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=2.5,
                                   linestyle="-" if hits[k] in (None, True) else "--", path_effects=halo,
                                   gid="dense-box"))
    if pts is not None and shown.any():
        ax.scatter(pts[shown, 0], pts[shown, 1], marker="*", s=MARKER_PT2,
                   c=[colours[k] for k in np.flatnonzero(shown)], edgecolors="white", linewidths=1.2, zorder=3,
                   gid="dense-points")
    if gt is not None:
        _title(ax, f"{sum(bool(x) for x in hits)}/{n} hits (IoU >= {IOU_HIT})", fig_w)
        ax.legend(handles=[Line2D([], [], color="grey", lw=2.5, label="predicted: hit"),
                           Line2D([], [], color="grey", lw=2.5, ls="--", label="predicted: miss"),
                           Line2D([], [], color="grey", lw=2, ls=":", label="ground truth")],
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=legend_cols,
                  fontsize=FONT_PT - 1, frameon=False)
    if note:
        note = textwrap.fill(" ".join(note.split()), int(fig_w * 72 / (FONT_PT * 0.55)))
        fig.supxlabel(note, fontsize=FONT_PT, ha="center", color=(0.55, 0.1, 0.1))
    ks = [k for k in range(n) if shown[k]]
    if ks and (labels is not None or scores is not None):
        _label_boxes(fig, ax, b, ks, colours, [label_text(k) for k in ks])
    return fig


def _label_boxes(fig, ax, b, ks, colours, texts):
    """Labels on boxes ``ks`` (see :func:`boxes`); numbered tags and a key when the words do not fit."""
    from matplotlib.patches import Patch

    def add(k, s):
        c = colours[k]
        t = ax.text(0, 0, s, transform=ax.transAxes, ha="left", va="bottom", fontsize=FONT_PT, zorder=5,
                    color="black" if np.dot(c, _LUMA) > 0.5 else "white",
                    bbox=dict(facecolor=c, alpha=0.9, pad=LABEL_PAD_PT, linewidth=0), gid="dense-label")
        t.set_in_layout(False)  # labels must not reshape the layout they are placed in
        return t

    fig.draw_without_rendering()  # settle the constrained layout before measuring
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    anchors = []
    for k in ks:
        (px0, py0), (px1, py1) = to_px((b[k, 0], b[k, 3])), to_px((b[k, 2], b[k, 1]))  # image y runs down
        anchors.append((min(px0, px1), min(py0, py1), max(px0, px1), max(py0, py1)))
    chars = int(ax.get_window_extent(renderer).width * 72 / fig.dpi / (FONT_PT * 0.6))
    artists = []
    if chars >= MIN_LABEL_CHARS:
        artists = [add(k, textwrap.fill(s, chars)) for k, s in zip(ks, texts, strict=True)]
        if _place_labels(fig, ax, artists, anchors):
            _leaders(fig, ax, artists, anchors, [colours[k] for k in ks])
            return
        for t in artists:
            t.remove()
    # numbered tags on the boxes, the words in a key beside the panel
    key_chars = min(60, max(len(s) for s in texts) + 4)  # longer labels wrap
    key_w = key_chars * FONT_PT * 0.55 / 72 + 0.6
    fw, fh = fig.get_size_inches()
    panel_w = ax.get_window_extent(renderer).width / fig.dpi
    fig.set_size_inches(max(fw, panel_w + key_w + 0.5), fh)
    ax.set_anchor("NE")  # the panel beside its key, not centred away from it
    fig.legend(handles=[Patch(facecolor=colours[k], edgecolor="black", linewidth=0.5,
                              label=textwrap.fill(f"{i + 1}  {s}", key_chars, subsequent_indent="    "))
                        for i, (k, s) in enumerate(zip(ks, texts, strict=True))],
               loc="outside right upper", fontsize=FONT_PT, frameon=False, handlelength=1.2)
    fig.draw_without_rendering()
    anchors = []
    for k in ks:
        (px0, py0), (px1, py1) = to_px((b[k, 0], b[k, 3])), to_px((b[k, 2], b[k, 1]))
        anchors.append((min(px0, px1), min(py0, py1), max(px0, px1), max(py0, py1)))
    tags = [add(k, str(i + 1)) for i, k in enumerate(ks)]
    if _place_labels(fig, ax, tags, anchors):
        _leaders(fig, ax, tags, anchors, [colours[k] for k in ks])


def _leaders(fig, ax, texts, anchors_px, colours) -> None:
    """A thin line from each label that had to move away from its box to the nearest point of the box."""
    renderer = fig.canvas.get_renderer()
    pad = LABEL_PAD_PT * fig.dpi / 72
    to_data = ax.transData.inverted()
    for t, (bx0, by0, bx1, by1), c in zip(texts, anchors_px, colours, strict=True):
        e = t.get_window_extent(renderer).padded(pad)
        # nearest points of the label and of the box (rectangles, display pixels)
        lx = float(np.clip((bx0 + bx1) / 2, e.x0, e.x1))
        ly = float(np.clip((by0 + by1) / 2, e.y0, e.y1))
        px, py = float(np.clip(lx, bx0, bx1)), float(np.clip(ly, by0, by1))
        lx, ly = float(np.clip(px, e.x0, e.x1)), float(np.clip(py, e.y0, e.y1))
        if math.hypot(px - lx, py - ly) < e.height:  # touching, or nearly: no line needed
            continue
        (x0, y0), (x1, y1) = to_data.transform([(lx, ly), (px, py)])
        ax.plot([x0, x1], [y0, y1], color=c, lw=1.2, zorder=4, solid_capstyle="round")


def localizations(image, found: Sequence, *, gt_boxes_xyxy=None, found_threshold: float | None = None):
    """:func:`boxes` for a list of :class:`dense.refer.Localization`: each expression's box, point and score; an
    answer that was not found (``found=False``) gets no box, only a note."""
    if not found:
        raise ValueError("no localizations to draw")
    return boxes(image, np.stack([f.box_xyxy for f in found]), [f.expression for f in found],
                 points_xy=np.stack([f.point_xy for f in found]), gt_boxes_xyxy=gt_boxes_xyxy,
                 scores=[f.score for f in found], found=[f.found for f in found], found_threshold=found_threshold)


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

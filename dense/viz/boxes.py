"""Box figures: predicted boxes, points and ground truth over an image, each box labelled with its score; answers
that were not found get no box, only a note (:func:`boxes`, :func:`localizations`)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

from dense.errors import InputError
from dense.labels import as_numpy
from dense.metrics import box_iou_xyxy
from dense.preprocess import load_image
from dense.viz.labelmap import class_colours
from dense.viz.layout import FONT_PT, DenseFigure, panel_title
from dense.viz.placement import MARKER_PT2, label_boxes

IOU_HIT = 0.5  # a predicted box is a hit at IoU >= this (Acc@0.5)
BOX_PANEL_IN = (9.0, 4.8)  # a box figure's image panel fills this (w, h) box at the image's aspect ratio ...
BOX_FIG_MAX_H_IN = 6.4  # ... and the panel gives up height to the title, legend and notes so the figure stays this
# tall: at the demo page's 90 dpi that is under its 600 px image height, so 11 pt labels are never scaled down
MIN_FIG_W_IN = 4.6  # titles, legends and notes need this much width, even beside a narrow image


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
            raise InputError(f"{len(given)} {name} for {n} boxes")
    pts = None if points_xy is None else as_numpy(points_xy).astype(np.float64).reshape(-1, 2)  # -> [N, 2]
    if pts is not None and len(pts) != n:
        raise InputError(f"{len(pts)} points for {n} boxes")
    shown = np.ones(n, bool) if found is None else np.asarray(found, bool)
    if colours is None:  # colour words in the expressions, as in label maps ("the red circle" drawn red)
        colours = class_colours(labels if labels is not None else [""] * n)
    halo = [patheffects.withStroke(linewidth=4.5, foreground="white")]  # visible on any background
    H, W = image.shape[:2]
    ious = None if gt is None else np.diagonal(box_iou_xyxy(b, gt))  # [N]: each box against its own ground truth
    hits = [None if gt is None else (bool(shown[k]) and ious[k] >= IOU_HIT) for k in range(n)]

    def label_text(k: int) -> str:
        text = labels[k] if labels is not None else f"#{k + 1}"
        if scores is not None:
            text += f" ({scores[k]:.2f})"
        if gt is not None and shown[k]:
            text += f": {'hit' if hits[k] else 'miss'} (IoU {ious[k]:.2f})"
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
        panel_title(ax, f"{sum(bool(x) for x in hits)}/{n} hits (IoU >= {IOU_HIT})", fig_w)
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
        label_boxes(fig, ax, b, ks, colours, [label_text(k) for k in ks])
    return fig


def localizations(image, found: Sequence, *, gt_boxes_xyxy=None, found_threshold: float | None = None):
    """:func:`boxes` for a list of :class:`dense.refer.Localization`: each expression's box, point and score; an
    answer that was not found (``found=False``) gets no box, only a note."""
    if not found:
        raise InputError("no localizations to draw")
    return boxes(image, np.stack([f.box_xyxy for f in found]), [f.expression for f in found],
                 points_xy=np.stack([f.point_xy for f in found]), gt_boxes_xyxy=gt_boxes_xyxy,
                 scores=[f.score for f in found], found=[f.found for f in found], found_threshold=found_threshold)



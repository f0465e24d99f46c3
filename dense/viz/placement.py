"""Label placement for box figures: each label inside its panel, free of every other label and of every point marker,
as near its box as a free place allows; thin leader lines to labels that had to move; numbered tags and a key beside
the panel when the words do not fit."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from dense.viz.layout import FONT_PT, LUMA

MARKER_PT2 = 220  # the point's star marker (area in pt^2)
LABEL_PAD_PT = 2.0  # the coloured box around a label's text
LABEL_GAP_PT = 1.5  # free space kept between labels, and between a label and a marker
MIN_LABEL_CHARS = 10  # a panel narrower than this many characters gets numbered tags and a key beside it


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


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


def place_labels(fig, ax, texts, anchors_px) -> bool:
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


def label_boxes(fig, ax, b, ks, colours, texts):
    """Labels on boxes ``ks`` (see :func:`boxes`); numbered tags and a key when the words do not fit."""
    from matplotlib.patches import Patch

    def add(k, s):
        c = colours[k]
        t = ax.text(0, 0, s, transform=ax.transAxes, ha="left", va="bottom", fontsize=FONT_PT, zorder=5,
                    color="black" if np.dot(c, LUMA) > 0.5 else "white",
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
        if place_labels(fig, ax, artists, anchors):
            draw_leaders(fig, ax, artists, anchors, [colours[k] for k in ks])
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
    if place_labels(fig, ax, tags, anchors):
        draw_leaders(fig, ax, tags, anchors, [colours[k] for k in ks])


def draw_leaders(fig, ax, texts, anchors_px, colours) -> None:
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



"""Matplotlib overlays: heatmaps over an image, label maps with a legend, boxes and points, PCA colours.

Every function returns a :class:`matplotlib.figure.Figure` built with the Agg backend (no display needed); save it with
``fig.savefig(path)``. Images are uint8 ``[H, W, 3]`` (anything :func:`dense.preprocess.load_image` reads is accepted);
heatmaps and label maps are at the image's size (use :func:`dense.heatmap.upsample` first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dense.preprocess import load_image


def _figure(n_panels: int, *, panel_size: float = 3.5):
    from matplotlib.figure import Figure  # a bare Figure uses Agg and never touches pyplot's global state

    fig = Figure(figsize=(panel_size * n_panels, panel_size), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    return fig, list(axes)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_hw(image: np.ndarray, maps: np.ndarray, what: str) -> None:
    if tuple(maps.shape[-2:]) != tuple(image.shape[:2]):
        raise ValueError(f"{what} {tuple(maps.shape)} is not at the image size {tuple(image.shape[:2])}; "
                         f"upsample it first (dense.heatmap.upsample)")


def heatmap(image, scores, *, title: str | None = None, alpha: float = 0.5, cmap: str = "jet",
            vmin: float | None = 0.0, vmax: float | None = None):
    """One heatmap ``[H, W]`` over the image, with a colour bar. ``vmax=None``: the map's own maximum."""
    image = load_image(image)
    scores = _np(scores).astype(np.float32)
    _check_hw(image, scores, "heatmap")
    fig, (ax,) = _figure(1, panel_size=4.5)
    ax.imshow(image)
    im = ax.imshow(scores, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def heatmaps(image, scores, queries: Sequence[str], *, alpha: float = 0.5, cmap: str = "jet",
             shared_scale: bool = True):
    """The image, then one panel per query: ``scores [T, H, W]`` over the image, titled with the query and its peak."""
    image = load_image(image)
    scores = _np(scores).astype(np.float32)
    _check_hw(image, scores, "heatmaps")
    if scores.ndim != 3 or scores.shape[0] != len(queries):
        raise ValueError(f"scores {scores.shape} do not match {len(queries)} queries")
    fig, axes = _figure(1 + len(queries))
    axes[0].imshow(image)
    axes[0].set_title("image")
    vmax = float(scores.max()) if shared_scale and scores.size else None
    for ax, s, q in zip(axes[1:], scores, queries, strict=True):
        ax.imshow(image)
        ax.imshow(s, cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax)
        ax.set_title(f"{q} (max {s.max():.2f})")
    return fig


def _palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1], background (index 0) black."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    colours = [cmap(k % 20)[:3] for k in range(max(n - 1, 0))]
    return np.array([(0.0, 0.0, 0.0)] + colours)[:n]


def label_map(image, labels, class_names: Sequence[str], *, alpha: float = 0.6, background: str = "background"):
    """Image and labels ``[H, W]`` side by side; ``labels`` 0 = background, ``k + 1`` = ``class_names[k]``; a legend
    lists the classes present."""
    image = load_image(image)
    labels = _np(labels).astype(np.int64)
    _check_hw(image, labels, "label map")
    names = [background, *class_names]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels {labels.min()}..{labels.max()} outside 0..{len(names) - 1}")
    colours = _palette(len(names))
    fig, axes = _figure(2, panel_size=4.0)
    axes[0].imshow(image)
    axes[0].set_title("image")
    rgb = colours[labels]  # [H, W] -> [H, W, 3]
    blend = np.where(labels[..., None] > 0, (1 - alpha) * image / 255.0 + alpha * rgb, image / 255.0)
    axes[1].imshow(blend)
    axes[1].set_title("labels")
    from matplotlib.patches import Patch

    present = np.unique(labels)
    handles = [Patch(facecolor=colours[k], label=names[k]) for k in present]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig


def boxes(image, boxes_xyxy, labels: Sequence[str] | None = None, *, points_xy=None, colour: str = "lime"):
    """Boxes ``[N, 4]`` (``x0, y0, x1, y1``, original-image pixels) and optional points ``[N, 2]`` over the image."""
    from matplotlib.patches import Rectangle

    image = load_image(image)
    b = _np(boxes_xyxy).astype(np.float64).reshape(-1, 4)  # -> [N, 4]
    fig, (ax,) = _figure(1, panel_size=4.5)
    ax.imshow(image)
    for k, (x0, y0, x1, y1) in enumerate(b):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2))
        if labels is not None:
            ax.text(x0, y0, labels[k], color="black", fontsize=8, va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, linewidth=0))
    if points_xy is not None:
        p = _np(points_xy).astype(np.float64).reshape(-1, 2)  # -> [N, 2]
        ax.scatter(p[:, 0], p[:, 1], marker="*", s=150, c="red", edgecolors="white")
    return fig


def pca(fmap, image=None):
    """A FeatureMap's first three principal components as colours (next to the image when given)."""
    rgb = fmap.pca_rgb(size_hw=fmap.image_hw)
    fig, axes = _figure(2 if image is not None else 1, panel_size=4.0)
    if image is not None:
        axes[0].imshow(load_image(image))
        axes[0].set_title("image")
    axes[-1].imshow(rgb)
    axes[-1].set_title("PCA of tokens")
    return fig

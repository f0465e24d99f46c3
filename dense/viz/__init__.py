"""Matplotlib figures: heatmaps over an image, label maps with a legend, boxes and points, PCA colours.

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg backend (no display, no pyplot state);
save it with ``fig.savefig(path)``. In Jupyter (and under nbclient / nbconvert) the figure shows inline as a PNG, with
any backend, because it has a ``_repr_png_``. Images are uint8 ``[H, W, 3]`` (anything
:func:`dense.preprocess.load_image` reads is accepted); heatmaps and label maps are at the image's size (use
:func:`dense.heatmap.to_image` first).

Panels are sized by the image's aspect ratio and wrap into rows so a figure stays at most ``MAX_WIDTH_IN`` wide.

One module per job: :mod:`~dense.viz.layout` (the figure, panels, titles), :mod:`~dense.viz.heat` (the heat
rendering rule and heatmap figures), :mod:`~dense.viz.labelmap` (class colours, painted label maps),
:mod:`~dense.viz.boxes` (box figures), :mod:`~dense.viz.placement` (where a box figure's labels go),
:mod:`~dense.viz.pca` (PCA colours).
"""

from dense.viz.boxes import BOX_PANEL_IN, IOU_HIT, boxes, localizations
from dense.viz.heat import HEAT_CMAP, heat_overlay, heat_ramp, heatmap, heatmaps
from dense.viz.labelmap import IGNORE_RGB, class_colours, label_map, label_swatches, paint_labels
from dense.viz.layout import FONT_PT, MAX_PANEL_H_IN, MAX_WIDTH_IN, DenseFigure, panel_grid, panel_layout
from dense.viz.pca import pca

__all__ = ["BOX_PANEL_IN", "FONT_PT", "HEAT_CMAP", "IGNORE_RGB", "IOU_HIT", "MAX_PANEL_H_IN", "MAX_WIDTH_IN",
           "DenseFigure", "boxes", "class_colours", "heat_overlay", "heat_ramp", "heatmap", "heatmaps", "label_map",
           "label_swatches", "localizations", "paint_labels", "panel_grid", "panel_layout", "pca"]

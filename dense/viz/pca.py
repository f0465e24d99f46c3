"""A FeatureMap's principal components as colours."""

from __future__ import annotations

from dense.preprocess import load_image
from dense.viz.layout import panel_grid, panel_title


def pca(fmap, image=None):
    """A FeatureMap's first three principal components as colours (next to the image when given)."""
    rgb = fmap.pca_rgb(size_hw=fmap.image_hw)
    fig, axes, w = panel_grid(2 if image is not None else 1, fmap.image_hw)
    if image is not None:
        axes[0].imshow(load_image(image))
        panel_title(axes[0], "image", w)
    axes[-1].imshow(rgb)
    panel_title(axes[-1], "PCA of tokens", w)
    return fig

"""What the heatmap functions accept: a FeatureMap checked against the encoder (identity, blocks, width), or an image
extracted with the blocks a method needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dense.errors import InputError
from dense.features import FeatureMap, check_featuremap_identity
from dense.heatmap.methods import method_of, required_layers, supported_methods
from dense.preprocess import ImageInput

ImageOrFeatureMap = ImageInput | FeatureMap


def check_featuremap(encoder, fmap: FeatureMap, layers: Sequence[int], what: str) -> torch.Tensor:
    """The tokens of ``layers`` (Python block indices) out of ``fmap``, which must come from ``encoder``.

    Raises ``ValueError`` naming what is missing and how to extract it (``MismatchError`` for another
    encoder's FeatureMap).
    """
    check_featuremap_identity(encoder.spec(), fmap, what)
    if not fmap.has_layers(layers, encoder.num_layers):
        raise InputError(f"{what} needs blocks {list(layers)} of the encoder; the FeatureMap holds blocks "
                         f"{list(fmap.layers)}: extract it with layers={tuple(layers)}")
    x = fmap.layer_tokens(layers, encoder.num_layers)
    if x.shape[-1] != encoder.hidden_size * len(layers):
        raise InputError(f"{what}: FeatureMap tokens of dim {x.shape[-1]} do not fit encoder hidden size "
                         f"{encoder.hidden_size} x {len(layers)} blocks")
    return x


def as_featuremap(encoder, image: ImageOrFeatureMap, method: str | None = None, *, max_patches: int | None = None
                  ) -> FeatureMap:
    """A FeatureMap as is, or an image extracted with the layers ``method`` needs."""
    if isinstance(image, FeatureMap):
        return image
    method = method_of(encoder, method)
    layers = required_layers(method) if method in supported_methods(encoder, experimental=True) else (-1,)
    return encoder.extract(image, max_patches=max_patches, layers=layers)

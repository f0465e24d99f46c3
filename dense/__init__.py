"""dense: dense features from SigLIP 2 So400m, at each image's native aspect ratio.

    >>> import dense
    >>> enc = dense.load_encoder("google/siglip2-so400m-patch14-384")   # or a local folder, or "shapes-tiny"
    >>> fmap = enc.extract("photo.jpg")                                 # FeatureMap: tokens [gh, gw, D] + geometry
    >>> probs = dense.classify(enc, "photo.jpg", ["a cat", "a dog"])     # zero-shot sigmoid probabilities
    >>> labels = dense.segment(enc, fmap, ["cat", "dog"])               # open-vocabulary label map [H, W]
    >>> where = dense.localize(enc, fmap, "the dog on the left")        # box_xyxy and point_xy
    >>> loc = dense.Localizer(enc, fmap)                                # one image, many expressions

Modules, one job each (dependencies flow down this list): ``preprocess`` (reading, grid, the pixel<->patch geometry),
``features`` (FeatureMap), ``encoder`` (loading, identity, calibration, extraction), ``head`` (the MAP head's
pieces), ``text`` (prompts and text embeddings), ``heatmap`` (dense text-aligned scores), ``openvocab``
(classification, retrieval, segmentation), ``refer`` (referring expressions), ``coco`` (datasets), ``metrics``,
``cache`` (on-disk features), ``eval`` (one evaluator per task), ``viz`` (figures), ``cli`` and ``demo``. Linear
probes live in the ``probes`` package, which reads dense's core and is read by ``eval``, ``cli`` and ``demo``.

The seven names below load their module on first use, so ``dense --help`` and ``import dense.cli`` stay light; every
module of the package is an attribute too (``dense.heatmap.patch_scores(...)`` after a plain ``import dense``).
dense's errors are in ``dense.errors`` (``DenseError`` and its kinds).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

__version__ = "0.2.0"

_EXPORTS = {"load_encoder": "dense.encoder", "random_encoder": "dense.encoder", "FeatureMap": "dense.features",
            "classify": "dense.openvocab", "segment": "dense.openvocab", "localize": "dense.refer",
            "Localizer": "dense.refer"}

# every module and package in this folder, read from the folder (not typed by hand): `dense.<name>` imports it
_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__))

__all__ = ["load_encoder", "random_encoder", "FeatureMap", "classify", "segment", "localize", "Localizer"]

if TYPE_CHECKING:
    from dense.encoder import load_encoder, random_encoder
    from dense.features import FeatureMap
    from dense.openvocab import classify, segment
    from dense.refer import Localizer, localize


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:  # `dense.heatmap.patch_scores(...)` after a plain `import dense`
        return importlib.import_module(f"dense.{name}")
    raise AttributeError(f"module 'dense' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""dense: dense features from SigLIP 2 So400m, at each image's native aspect ratio.

    >>> import dense
    >>> enc = dense.load_encoder("google/siglip2-so400m-patch14-384")   # or a local folder, or "shapes-tiny"
    >>> fmap = enc.extract("photo.jpg")                                 # FeatureMap: tokens [gh, gw, D] + geometry
    >>> probs = dense.classify(enc, "photo.jpg", ["a cat", "a dog"])     # zero-shot sigmoid probabilities
    >>> labels = dense.segment(enc, fmap, ["cat", "dog"])               # open-vocabulary label map [H, W]
    >>> where = dense.localize(enc, fmap, "the dog on the left")        # box_xyxy and point_xy
    >>> loc = dense.Localizer(enc, fmap)                                # one image, many expressions

Modules by layer; a module imports only from its own layer and the layers above it here (README.md, "Modules, one
job each", says what each does; ``tests/test_architecture.py`` checks the imports):

    foundations        errors  _atomic  _progress  labels  device  preprocess  refine  upsample.guided
          |
    data and geometry  features  head  compiled  batching  checkpoint  distributed  metrics  coco  segdata  datasets
                       viz
          |
    encoder            encoder  text  cache  extract  tiling  upsample
          |
    text-aligned       heatmap  heatmap.methods  heatmap.distractors  heatmap.inputs  heatmap.scores  heatmap.windows
                       openvocab  refer  similarity
          |
    probes             probes/
          |
    evaluation         eval
          |
    applications       cli  demo  explore

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

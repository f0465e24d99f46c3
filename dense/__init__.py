"""dense: dense features from SigLIP 2 So400m, at each image's native aspect ratio.

    >>> import dense
    >>> enc = dense.load_encoder("google/siglip2-so400m-patch14-384")   # or a local folder, or "shapes-tiny"
    >>> fmap = enc.extract("photo.jpg")                                 # FeatureMap: tokens [gh, gw, D] + geometry
    >>> probs = dense.classify(enc, "photo.jpg", ["a cat", "a dog"])     # zero-shot sigmoid probabilities
    >>> labels = dense.segment(enc, "photo.jpg", ["cat", "dog"])         # open-vocabulary label map [H, W]
    >>> where = dense.localize(enc, "photo.jpg", "the dog on the left")  # box_xyxy and point_xy

Modules: ``encoder``, ``preprocess`` (geometry), ``features``, ``text``, ``heatmap``, ``localize``, ``coco``,
``metrics``, ``cache``, ``viz``, ``datasets``; linear probes live in the ``probes`` package; the ``dense`` command
in ``cli``.
"""

from dense.encoder import load_encoder, random_encoder
from dense.features import FeatureMap
from dense.heatmap import classify, segment
from dense.localize import localize  # after the submodule import, so `dense.localize` is the function

__all__ = ["load_encoder", "random_encoder", "FeatureMap", "classify", "segment", "localize"]

"""Text-aligned dense scores: each patch of a :class:`~dense.FeatureMap` scored against text queries.

Each method turns the tokens of a FeatureMap into one vector ``z_n`` per patch in the text embedding space (through
the MAP head's pieces, :mod:`dense.head`); a patch's score for a query ``t`` is then
``sigmoid(exp(logit_scale) * cos(z_n, t) + logit_bias)`` with the checkpoint's own sigmoid calibration. The tower may
run in bf16; the head pieces, the scores and everything after them run in float32.

Methods (``METHODS``, the default registry; the ones marked experimental are in ``EXPERIMENTAL_METHODS`` and run when
named: they won no column of RESULTS.md's "Heatmap methods"; every one needs the last block's output, ``clear-*`` also
its input, see ``required_layers``):

- ``raw``: ``z_n = x_n``. The baseline: the tokens were never trained to sit in the text space.
- ``map-value``: ``z_n = out_proj(v_n)``, the head's output if all its attention were on patch n (MaskCLIP's trick,
  Zhou et al. 2022).
- ``map-value-mlp``: the same followed by the head's MLP residual ``z + mlp(layernorm(z))``.
- ``attn-value`` (experimental): patch n's share of the pooled vector, ``z_n = N * out_proj_nobias(a_n v_n) + b_out``
  (per head ``a_{h,n}``), then the MLP residual. With uniform attention it is ``map-value-mlp``; patches the probe
  ignores shrink towards the bias, so their scores fall towards a query-independent floor.
- ``leave-one-out`` (experimental): ``z_n = e - e_{-n}`` where ``e_{-n}`` is the head's output with patch n masked
  out of its attention (closed form, one pass): the direction in which patch n moves the image embedding.
- ``clear-map-value`` / ``clear-map-value-mlp``: ClearCLIP (Lan et al. 2024) / SCLIP (Wang et al. 2024) adapted to
  SigLIP. The LAST block is re-run on its input with self-self attention (``softmax(q q^T) + softmax(k k^T)``,
  SCLIP's correlative attention), no residual, no MLP; ``post_layernorm`` is applied (the MAP head expects it), then
  ``map-value`` / ``map-value-mlp``. Needs the FeatureMap to hold the block before the last (``layers=(-2, -1)``);
  images passed directly are extracted that way.
- ``<method>+filter`` (every method above; experimental): distractor-token filtering first
  (:func:`filter_distractors`, after "Vision Transformers Need Registers" and SC-CLIP): tokens whose norm is a robust
  outlier of the image, or that are isolated in feature space (the cues are the checkpoint's
  ``Calibration.distractor_cues``), are replaced by the mean of their 3x3 grid neighbours.

Image-resolution scores (:func:`image_scores`) add two options: ``windows=n`` (n x n overlapping crops, each extracted
at the token budget, scores stitched by averaging) and ``refine="pamr"`` (:func:`dense.refine.pamr`).

Which method, threshold and templates a checkpoint uses by default is its calibration
(:class:`dense.checkpoint.Calibration`, read from ``dense_calibration.json`` beside its weights).

The modules, one job each: :mod:`~dense.heatmap.methods` (the methods and their registries),
:mod:`~dense.heatmap.distractors` (the ``+filter`` step), :mod:`~dense.heatmap.inputs` (FeatureMap checks, image
extraction), :mod:`~dense.heatmap.scores` (aligned tokens and patch scores), :mod:`~dense.heatmap.windows`
(image-size scores, sliding windows). Every public name is importable from ``dense.heatmap``.
"""

from __future__ import annotations

from dense.heatmap.distractors import DISTRACTOR_CUES, distractor_mask, filter_distractors, replace_with_neighbours
from dense.heatmap.inputs import ImageOrFeatureMap, as_featuremap, check_featuremap
from dense.heatmap.methods import (
    EXPERIMENTAL_METHODS,
    METHODS,
    Method,
    clear_block,
    get_method,
    layers_for,
    method_of,
    required_layers,
    supported_methods,
)
from dense.heatmap.scores import (
    aligned_tokens,
    logits,
    patch_scores,
    templates_of,
    text_matrix,
    to_image,
    with_aligned,
)
from dense.heatmap.windows import image_scores, sliding_window_scores

__all__ = ["DISTRACTOR_CUES", "EXPERIMENTAL_METHODS", "METHODS", "ImageOrFeatureMap", "Method", "aligned_tokens",
           "as_featuremap", "check_featuremap", "clear_block", "distractor_mask", "filter_distractors", "get_method",
           "image_scores", "layers_for", "logits", "method_of", "patch_scores", "replace_with_neighbours",
           "required_layers", "sliding_window_scores", "supported_methods", "templates_of", "text_matrix",
           "to_image", "with_aligned"]

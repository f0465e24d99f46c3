"""Open-vocabulary answers from text queries: zero-shot classification, retrieval and training-free segmentation.

All take ``image``: a path, PIL image, uint8 array or :class:`~dense.FeatureMap` (or a list of them), and
``max_patches`` for images that are extracted here. ``method``, ``templates`` and ``background`` default to the
encoder's calibration (:class:`dense.checkpoint.Calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dense import head as maphead
from dense.errors import InputError
from dense.features import FeatureMap
from dense.heatmap import (
    ImageOrFeatureMap,
    check_featuremap,
    image_scores,
    logits,
    patch_scores,
    templates_of,
    to_image,
    with_aligned,
)
from dense.text import check_queries, embed_texts


def _as_batch(images) -> tuple[list, bool]:
    """``(list of images, was it a batch)``: a list or tuple is a batch; anything else is one image."""
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


@torch.inference_mode()
def embed_images(encoder, images: ImageOrFeatureMap | Sequence[ImageOrFeatureMap], *,
                 max_patches: int | None = None) -> torch.Tensor:
    """Image(s) (or FeatureMaps holding the last block) -> unit MAP-pooled image embeddings ``[B, E]``.

    A single image gives ``[1, E]``. Equals transformers' ``pooler_output`` for the same pixels (the head runs in
    float32 whatever the tower's dtype, :mod:`dense.head`).
    """
    images, _ = _as_batch(images)
    out = []
    for im in images:
        fmap = im if isinstance(im, FeatureMap) else encoder.extract(im, max_patches=max_patches)
        x = check_featuremap(encoder, fmap, (-1,), "the pooled image embedding")  # [gh, gw, D]
        out.append(maphead.pooled_fp32(encoder.vision.head, x.reshape(-1, encoder.hidden_size)))  # [E], float32
    return F.normalize(torch.stack(out), dim=-1)  # [B, E]


def classify(encoder, image: ImageOrFeatureMap | Sequence[ImageOrFeatureMap], class_names: str | Sequence[str], *,
             templates: Sequence[str] | None = None, max_patches: int | None = None) -> torch.Tensor:
    """Zero-shot sigmoid probabilities ``[T]`` that ``image`` shows each of ``class_names``; a list of images gives
    ``[B, T]``.

    Independent per class (SigLIP's sigmoid, not a softmax): they need not sum to one.
    """
    check_queries([class_names] if isinstance(class_names, str) else class_names, "class_names", at_least_one=True)
    images, batch = _as_batch(image)
    img = embed_images(encoder, images, max_patches=max_patches)  # [B, E]
    text = embed_texts(encoder, class_names, templates=templates_of(encoder, templates))  # [T, E]
    probs = torch.sigmoid(logits(encoder, img, text)).T  # [T, B] -> [B, T]
    return probs if batch else probs[0]


def retrieve(image_emb: torch.Tensor, text_emb: torch.Tensor, *, k: int = 5, by: str = "text"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine matches: ``by="text"`` ranks images for each text (``[T, k]``), ``"image"`` texts per image.

    Returns ``(scores, indices)``, both ``[Q, k]``; the ranking is the same as by sigmoid probability.
    """
    sim = text_emb.float() @ image_emb.float().T  # [T, B]
    if by == "image":
        sim = sim.T  # [B, T]
    elif by != "text":
        raise InputError(f"by must be 'text' or 'image', got {by!r}")
    return sim.topk(min(k, sim.shape[1]), dim=1)


def segment(encoder, image: ImageOrFeatureMap | Sequence[ImageOrFeatureMap], class_names: Sequence[str], *,
            features: FeatureMap | Sequence[FeatureMap] | None = None, background: float | Sequence[str] | None = None,
            method: str | None = None, templates: Sequence[str] | None = None, max_patches: int | None = None,
            windows: int | None = None, refine: str | None = None) -> np.ndarray | list[np.ndarray]:
    """Training-free semantic segmentation at the original resolution: int32 ``[H, W]``, 0 = background, ``k + 1`` =
    ``class_names[k]``; a list of images gives a list of label maps.

    ``image``: a path, PIL image or uint8 array, or its FeatureMap when no option needs the pixels. ``features``: the
    image's FeatureMap (a list for a list of images), already extracted, so that ``refine``/``windows`` get the pixels
    from ``image`` and the tokens from here. ``background``: a probability threshold (a pixel whose best class scores
    below it is background; ``0`` labels every pixel with its best class), a list of background prompts
    (``["background", "sky"]``) that compete with the classes in the argmax and win as 0, or None for the encoder's
    calibrated threshold. ``windows`` (sliding windows) and ``refine`` (``"pamr"``): see
    :func:`dense.heatmap.image_scores`; None: the encoder's calibration.
    """
    class_names = check_queries(class_names, "class_names", at_least_one=True)
    cal = encoder.calibration
    windows = cal.windows if windows is None else windows
    refine = cal.refine if refine is None else refine
    if background is None:
        background = cal.background or 0.0
    if isinstance(background, (int, float)) and not 0.0 <= background <= 1.0:
        raise InputError(f"background threshold must be in [0, 1], got {background}")
    bg_prompts = background_prompts(background)
    images, batch = _as_batch(image)
    if features is None:
        feats = [None] * len(images)
    else:
        feats, feats_batch = _as_batch(features)
        if feats_batch != batch or len(feats) != len(images):
            raise InputError(f"features: expected {'a list of ' if batch else 'one '}FeatureMap for each image "
                             f"({len(images)}), got {len(feats)}")
    out = []
    pixels = windows > 1 or refine not in (None, "none")
    if pixels and any(isinstance(im, FeatureMap) for im in images):
        raise InputError(f"windows={windows}, refine={refine!r} (the encoder's calibration unless given) need the "
                         "image's pixels: pass the image (and its FeatureMap as features=), or windows=1, "
                         "refine='none'")
    for im, fm in zip(images, feats, strict=True):
        if pixels:  # scores at the image's pixels
            probs = image_scores(encoder, im, class_names + bg_prompts, features=fm, method=method,
                                 templates=templates, max_patches=max_patches, windows=windows,
                                 refine=refine)  # [C + B, H, W]
            out.append(labels_from_scores(probs, len(class_names), background))  # -> [H, W]
            continue
        fmap = with_aligned(encoder, fm if fm is not None else im, method, max_patches=max_patches)
        scores = patch_scores(encoder, fmap, class_names + bg_prompts, method=method, templates=templates)
        out.append(labels_from_patch_scores(scores, fmap, len(class_names), background))  # [C + B, gh, gw] -> [H, W]
    return out if batch else out[0]


# Classes upsampled at once by labels_from_patch_scores: each costs one float32 [H, W] map (48 MB at 12 MP).
CHUNK_CLASSES = 2


def labels_from_patch_scores(scores: torch.Tensor, fmap: FeatureMap, num_classes: int,
                             background: float | Sequence[str] | None = None, *, size_hw: tuple[int, int] | None = None,
                             chunk: int = CHUNK_CLASSES) -> np.ndarray:
    """Patch scores ``[C (+ B), gh, gw]`` -> int32 labels ``[H, W]``: exactly :func:`labels_from_scores` of the
    upsampled scores, but upsampling ``chunk`` maps at a time into a running best (updated in place). Peak memory is
    about ``chunk + 2.25`` float32 ``[H, W]`` maps instead of ``C + B`` (``python benchmarks/segment_memory.py
    --unchunked`` prints both peaks for 150 classes on a 12 MP photo).

    Ties keep the first class, as ``max(dim=0)`` does: a later class wins a pixel only when strictly greater.
    """
    size_hw = tuple(size_hw or fmap.image_hw)
    n = scores.shape[0]
    if n < num_classes or num_classes < 1:
        raise InputError(f"{n} score maps for {num_classes} classes")
    H, W = size_hw
    best = torch.full((H, W), -torch.inf)  # running max over classes
    arg = torch.zeros((H, W), dtype=torch.int32)  # its class index
    bg = torch.full((H, W), -torch.inf) if n > num_classes else None  # running max over background prompts
    win = torch.empty((H, W), dtype=torch.bool)
    start = 0
    while start < n:
        stop = min(start + chunk, num_classes if start < num_classes else n)  # classes and prompts never mix
        up = to_image(scores[start:stop], fmap, size_hw)  # [c, gh, gw] -> [c, H, W]
        for k in range(start, stop):
            m = up[k - start]  # [H, W]
            if k < num_classes:
                torch.gt(m, best, out=win)  # strict: ties stay with the earlier class
                arg.masked_fill_(win, k)
                torch.maximum(best, m, out=best)
            else:
                torch.maximum(bg, m, out=bg)
        del up
        start = stop
    labels = arg.add_(1)
    if bg is not None:
        labels[bg > best] = 0
    elif background is not None:
        labels[best < float(background)] = 0
    return labels.numpy()


def background_prompts(background) -> list[str]:
    """The prompts of a ``background`` argument (none for a threshold)."""
    if background is None or isinstance(background, (int, float)):
        return []
    if isinstance(background, str):
        return [background]
    return list(background)


def labels_from_scores(probs: torch.Tensor, num_classes: int, background: float | Sequence[str] | None = None
                       ) -> np.ndarray:
    """Scores ``[C (+ B background prompts), H, W]`` -> int32 labels ``[H, W]``: 0 background, ``k + 1`` class k.

    The rule of :func:`segment` (``background``: a probability threshold, prompts scored after the classes, or None
    for the plain argmax over classes).
    """
    best, arg = probs[:num_classes].max(dim=0)  # [H, W]
    labels = arg.to(torch.int32) + 1
    if probs.shape[0] > num_classes:
        labels[probs[num_classes:].max(dim=0).values > best] = 0
    elif background is not None:
        labels[best < float(background)] = 0
    return labels.numpy()


__all__ = ["embed_images", "classify", "retrieve", "segment", "labels_from_scores", "labels_from_patch_scores",
           "background_prompts"]

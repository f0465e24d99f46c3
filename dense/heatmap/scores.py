"""Scores: aligned patch vectors (a method's output, unit-normalized, float32) against text embeddings, through the
checkpoint's sigmoid calibration ``sigmoid(exp(logit_scale) * cos(z_n, t) + logit_bias)``.

Everything here runs in float32 whatever the tower's dtype: the method reads float32 copies of the head's pieces
(:func:`dense.head.fp32_parts`) and float32 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from dense.batching import embed_patches
from dense.errors import InputError
from dense.features import FeatureMap, check_featuremap_identity
from dense.head import fp32_parts
from dense.heatmap.distractors import filter_distractors
from dense.heatmap.inputs import ImageOrFeatureMap, as_featuremap, check_featuremap
from dense.heatmap.methods import get_method, method_of, required_layers
from dense.preprocess import load_image, to_pixels
from dense.text import embed_texts


def templates_of(encoder, templates: Sequence[str] | None) -> tuple[str, ...]:
    """``templates``, or the encoder's calibrated default when None (``("{}",)`` embeds queries verbatim)."""
    return tuple(templates) if templates is not None else tuple(encoder.calibration.templates)


def _vectors(encoder, m, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """Method ``m`` on last-block tokens ``x [gh, gw, D]`` (and the block's input ``prev``), filtered first for a
    ``+filter`` method, in float32 on the model's device: unit vectors ``[gh, gw, E]`` (float32, CPU)."""
    gh, gw, D = x.shape
    x, prev = x.float(), (prev.float() if prev is not None else None)
    if m.filter:
        x, prev, _ = filter_distractors(x, prev, cues=encoder.calibration.distractor_cues)
    parts = fp32_parts(encoder.vision)
    device = next(encoder.vision.parameters()).device
    x = x.reshape(gh * gw, D).to(device)  # [gh, gw, D] -> [N, D]
    prev = prev.reshape(gh * gw, D).to(device) if prev is not None else None  # [gh, gw, D] -> [N, D]
    with torch.inference_mode():
        z = m.fn(parts, x, prev).float().cpu()  # [N, E]
    return F.normalize(z, dim=-1).reshape(gh, gw, -1)  # [N, E] -> [gh, gw, E]


@torch.inference_mode()
def aligned_tokens(encoder, fmap: FeatureMap, method: str | None = None) -> torch.Tensor:
    """Unit-normalized text-comparable patch vectors ``[gh, gw, E]`` (float32, CPU).

    ``fmap`` must hold the last block (``layers`` containing -1, the default) and, for ``clear-*`` methods, also the
    block before it (``layers=(-2, -1)``). A FeatureMap made by :func:`with_aligned` for the same method returns its
    stored tokens.
    """
    method = method_of(encoder, method)
    check_featuremap_identity(encoder.spec(), fmap, f"method {method!r}")  # before the stored tokens are trusted
    if fmap.aligned is not None and fmap.encoder_spec.get("aligned_method") == method:
        return fmap.aligned
    m = get_method(method)
    if m.needs_prev and encoder.num_layers < 2:
        raise InputError(f"method {method!r} needs the input of the last block; {encoder.name} has only one block, "
                         f"whose input (the patch embedding) no FeatureMap holds: pass the image itself")
    tokens = check_featuremap(encoder, fmap, required_layers(method), f"method {method!r}")  # [gh, gw, D * L]
    D = encoder.hidden_size
    x, prev = tokens[..., -D:], (tokens[..., :D] if m.needs_prev else None)  # last block (and its input) [gh, gw, D]
    return _vectors(encoder, m, x, prev)


def with_aligned(encoder, image: ImageOrFeatureMap, method: str | None = None, *, max_patches: int | None = None
                 ) -> FeatureMap:
    """A FeatureMap carrying ``aligned`` tokens of ``method`` (computed once; reused by :func:`patch_scores`).

    From an image, ``clear-*`` methods on a 1-block tower also run the patch embedding (the input of that block) here.
    """
    method = method_of(encoder, method)
    m = get_method(method)
    if m.needs_prev and encoder.num_layers < 2 and not isinstance(image, FeatureMap):
        rgb = load_image(image)
        fmap = encoder.extract(rgb, max_patches=max_patches)
        gh, gw = fmap.grid_hw
        p = next(encoder.vision.parameters())
        px = to_pixels(rgb, fmap.grid_hw, encoder.pixels)  # [3, gh*p, gw*p]
        with torch.inference_mode():  # the input of block 0, the patch embedding
            emb, _ = embed_patches(encoder.vision, encoder.family, [px], device=p.device, dtype=p.dtype)  # [1, N, D]
        prev = emb[0].float().cpu().reshape(gh, gw, -1)  # [1, N, D] -> [gh, gw, D]
        z = _vectors(encoder, m, fmap.tokens, prev)  # [gh, gw, E]
    else:
        fmap = as_featuremap(encoder, image, method, max_patches=max_patches)
        z = aligned_tokens(encoder, fmap, method)
    return replace(fmap, aligned=z, encoder_spec={**fmap.encoder_spec, "aligned_method": method})


def logits(encoder, image_or_patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Unit vectors ``[..., E]`` x text ``[T, E]`` -> ``[T, ...]`` logits ``exp(scale) * cos + bias``."""
    parts = encoder.text_parts()
    scale, bias = float(parts.logit_scale.exp()), float(parts.logit_bias)
    cos = torch.einsum("...e,te->t...", image_or_patch_emb.float(), text_emb.float())  # [T, ...]
    return cos * scale + bias


def text_matrix(encoder, queries, templates: Sequence[str] | None = None) -> torch.Tensor:
    """Queries (a string, strings, or precomputed unit embeddings ``[T, E]``) -> ``[T, E]``."""
    if isinstance(queries, torch.Tensor):
        if queries.ndim != 2:
            raise InputError(f"query embeddings must be [T, E], got {tuple(queries.shape)}")
        return queries.float()
    return embed_texts(encoder, queries, templates=templates_of(encoder, templates))


def patch_scores(encoder, image: ImageOrFeatureMap, queries, *, method: str | None = None,
                 templates: Sequence[str] | None = None, max_patches: int | None = None) -> torch.Tensor:
    """Per-patch sigmoid probabilities ``[T, gh, gw]`` for text queries, with the checkpoint's logit scale and bias.

    ``image``: a path, PIL image, uint8 array or FeatureMap (see :func:`aligned_tokens` for the layers each method
    needs). ``queries``: a string, a list of strings (embedded with ``templates``), or unit text embeddings ``[T, E]``
    from :func:`dense.text.embed_texts`. ``method``/``templates`` None: the encoder's calibration.
    """
    fmap = image if isinstance(image, FeatureMap) else with_aligned(encoder, image, method, max_patches=max_patches)
    z = aligned_tokens(encoder, fmap, method)  # [gh, gw, E]
    text = text_matrix(encoder, queries, templates)  # [T, E]
    return torch.sigmoid(logits(encoder, z, text))  # [T, gh, gw]


def to_image(scores: torch.Tensor, fmap: FeatureMap, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Patch scores ``[T, gh, gw]`` -> ``[T, H, W]`` at the original image size (or ``size_hw``), bilinear.

    Same geometry as :meth:`FeatureMap.to_image`: the grid tiles the resized image, ``align_corners=False`` puts each
    value at its patch centre.
    """
    gh, gw = fmap.grid_hw
    if tuple(scores.shape[-2:]) != (gh, gw):
        raise InputError(f"scores {tuple(scores.shape)} do not match the grid {gh}x{gw}")
    size_hw = tuple(size_hw or fmap.image_hw)
    return F.interpolate(scores[None].float(), size=size_hw, mode="bilinear", align_corners=False)[0]  # [T, H, W]

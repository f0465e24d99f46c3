"""Text-aligned dense scores: each patch of a :class:`~dense.FeatureMap` scored against text queries.

Each method turns the tokens of a FeatureMap into one vector ``z_n`` per patch in the text embedding space (through
the MAP head's pieces, :mod:`dense.head`); a patch's score for a query ``t`` is then
``sigmoid(exp(logit_scale) * cos(z_n, t) + logit_bias)`` with the checkpoint's own sigmoid calibration.

Methods (``METHODS``; every one needs the last block's output, ``clear-*`` also its input, see ``required_layers``):

- ``raw``: ``z_n = x_n``. The baseline: the tokens were never trained to sit in the text space.
- ``map-value``: ``z_n = out_proj(v_n)``, the head's output if all its attention were on patch n (MaskCLIP's trick).
- ``map-value-mlp``: the same followed by the head's MLP residual ``z + mlp(layernorm(z))``.
- ``attn-value``: patch n's share of the pooled vector, ``z_n = N * out_proj_nobias(a_n v_n) + b_out`` (per head
  ``a_{h,n}``), then the MLP residual. With uniform attention it is ``map-value-mlp``; patches the probe ignores
  shrink towards the bias, so their scores fall towards a query-independent floor.
- ``leave-one-out``: ``z_n = e - e_{-n}`` where ``e_{-n}`` is the head's output with patch n masked out of its
  attention (closed form, one pass): the direction in which patch n moves the image embedding.
- ``clear-map-value`` / ``clear-map-value-mlp``: ClearCLIP/SCLIP adapted to SigLIP. The LAST block is re-run on its
  input with self-self attention (``softmax(q q^T) + softmax(k k^T)``, SCLIP's correlative attention), no residual, no
  MLP; ``post_layernorm`` is applied (the MAP head expects it), then ``map-value`` / ``map-value-mlp``. Needs the
  FeatureMap to hold the block before the last (``layers=(-2, -1)``); images passed directly are extracted that way.
- ``<method>+filter`` (every method above): distractor-token filtering first (:func:`filter_distractors`, after
  "Vision Transformers Need Registers" and SC-CLIP): tokens whose norm is a robust outlier of the image, or that are
  isolated in feature space (the cues are the checkpoint's ``Calibration.distractor_cues``), are replaced by the
  mean of their 3x3 grid neighbours.

Image-resolution scores (:func:`image_scores`) add two options: ``windows=n`` (n x n overlapping crops, each extracted
at the token budget, scores stitched by averaging) and ``refine="pamr"`` (:func:`dense.refine.pamr`).

Which method, threshold and templates a checkpoint uses by default is its calibration
(:class:`dense.checkpoint.Calibration`, read from ``dense_calibration.json`` beside its weights); the README gives the
measured tables and the commands that produced them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from dense import head as maphead
from dense.batching import embed_patches
from dense.features import FeatureMap, check_featuremap_identity
from dense.preprocess import ImageInput, load_image, to_pixels
from dense.text import embed_texts

ImageOrFeatureMap = ImageInput | FeatureMap


@dataclass(frozen=True)
class Method:
    """A way to turn last-block tokens into text-comparable patch vectors."""

    name: str
    fn: Callable  # (vision model, x_last [N, D], x_prev [N, D] | None) -> z [N, E] (not normalized)
    needs_prev: bool = False  # needs the input of the last block (the block before it)
    doc: str = ""
    filter: bool = False  # replace distractor tokens by their neighbours' mean first (filter_distractors)


def _raw(vision, x, prev):
    return x


def _map_value(vision, x, prev):
    return vision.head.attention.out_proj(maphead.value(vision.head, x))


def _map_value_mlp(vision, x, prev):
    return maphead.mlp_residual(vision.head, _map_value(vision, x, prev))


def _attn_value(vision, x, prev):
    head = vision.head
    N, D = x.shape
    a, v = maphead.attention_and_values(head, x)  # [H, N], [N, H, hd]
    c = (a.T[..., None] * v).reshape(N, D)  # [N, H, 1] * [N, H, hd] -> [N, H, hd] -> [N, D]
    out = head.attention.out_proj
    z = N * F.linear(c, out.weight) + out.bias  # [N, D]
    return maphead.mlp_residual(head, z)


def _leave_one_out(vision, x, prev):
    head = vision.head
    N, D = x.shape
    a, v = maphead.attention_and_values(head, x)  # [H, N], [N, H, hd]
    total = torch.einsum("hn,nhd->hd", a, v)  # [H, hd]: sum_n a_{h,n} v_{h,n}
    keep = (1 - a.T).clamp_min(1e-6)[..., None]  # [N, H, 1]: attention mass left when patch n is masked out
    y_minus = (total[None] - a.T[..., None] * v) / keep  # [N, H, hd]: renormalized attention without patch n
    e_minus = maphead.mlp_residual(head, head.attention.out_proj(y_minus.reshape(N, D)))  # [N, D] -> [N, E]
    e = maphead.pooled(head, x)  # [E]
    return e[None] - e_minus  # [N, E]; e + (N - 1)(e - e_minus) scored worse: low-attention patches looked like e


def _clear_block(vision, prev: torch.Tensor) -> torch.Tensor:
    """Re-run the last block on its input ``prev [N, D]``: self-self attention, no residual, no MLP, then post-LN."""
    block = vision.encoder.layers[-1]
    attn = block.self_attn
    N, D = prev.shape
    H = attn.num_heads
    y = block.layer_norm1(prev)
    q = attn.q_proj(y).reshape(N, H, D // H).transpose(0, 1)  # [N, D] -> [N, H, hd] -> [H, N, hd]
    k = attn.k_proj(y).reshape(N, H, D // H).transpose(0, 1)  # -> [H, N, hd]
    v = attn.v_proj(y).reshape(N, H, D // H).transpose(0, 1)  # -> [H, N, hd]
    s = attn.scale
    w = torch.softmax(q @ q.transpose(1, 2) * s, dim=-1) + torch.softmax(k @ k.transpose(1, 2) * s, dim=-1)  # [H, N, N]
    o = (w @ v).transpose(0, 1).reshape(N, D)  # [H, N, hd] -> [N, H, hd] -> [N, D]
    return vision.post_layernorm(attn.out_proj(o))


def _clear_map_value(vision, x, prev):
    return _map_value(vision, _clear_block(vision, prev), None)


def _clear_map_value_mlp(vision, x, prev):
    return _map_value_mlp(vision, _clear_block(vision, prev), None)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("raw", _raw, doc="last-layer tokens as they are (baseline)"),
    Method("map-value", _map_value, doc="value + output projection of the MAP head"),
    Method("map-value-mlp", _map_value_mlp, doc="map-value + the head's MLP residual"),
    Method("attn-value", _attn_value, doc="attention-weighted value contribution, + MLP residual"),
    Method("leave-one-out", _leave_one_out, doc="pooled embedding minus pooled-without-patch"),
    Method("clear-map-value", _clear_map_value, needs_prev=True,
           doc="last block with self-self attention, no residual/MLP, then map-value"),
    Method("clear-map-value-mlp", _clear_map_value_mlp, needs_prev=True,
           doc="last block with self-self attention, no residual/MLP, then map-value-mlp"),
)}


METHODS.update({f"{m.name}+filter": replace(m, name=f"{m.name}+filter", filter=True,
                                            doc=f"{m.doc}, distractor tokens replaced by their neighbours first")
                for m in list(METHODS.values())})


def _robust_z(v: torch.Tensor) -> torch.Tensor:
    """``(v - median) / (1.4826 MAD)``; a constant vector gives 0 everywhere (and any other value a huge z)."""
    med = v.median()
    mad = (v - med).abs().median()
    return (v - med) / (1.4826 * mad + 1e-6 * med.abs() + 1e-12)


DISTRACTOR_CUES = ("norm", "isolation")


@torch.inference_mode()
def distractor_mask(tokens: torch.Tensor, *, cues: Sequence[str] = DISTRACTOR_CUES, z: float = 5.0, k: int = 3,
                    max_frac: float = 0.1) -> torch.Tensor:
    """Bool ``[gh, gw]``: the tokens ``[gh, gw, D]`` that look like ViT "register"/global tokens.

    Cues (``DISTRACTOR_CUES``), each a robust z-score over the image's tokens (``(v - median) / (1.4826 MAD)``), a
    token being flagged when any cue exceeds ``z``:

    - ``"norm"``: the token's norm (Darcet et al. 2024: artefact tokens have several times the typical norm);
    - ``"isolation"``: one minus its mean cosine similarity to its ``k`` nearest other tokens (SC-CLIP's local-outlier
      idea, which also catches anomalies that a final layer norm rescaled). On sparse scenes (a few small objects on
      a plain background, e.g. the synthetic shapes) it flags the objects themselves, so the bundled checkpoints'
      calibrations (``Calibration.distractor_cues``) leave it out.

    At most ``max_frac`` of the tokens (the most anomalous) are flagged.
    """
    gh, gw, D = tokens.shape
    x = tokens.reshape(gh * gw, D).float()  # [gh, gw, D] -> [N, D]
    N = x.shape[0]
    unknown = set(cues) - set(DISTRACTOR_CUES)
    if unknown:
        raise ValueError(f"unknown distractor cues {sorted(unknown)}; choose from {DISTRACTOR_CUES}")
    if N < 4 or not cues:
        return torch.zeros(gh, gw, dtype=torch.bool)
    score = torch.full((N,), -float("inf"))
    if "norm" in cues:
        score = torch.maximum(score, _robust_z(x.norm(dim=-1)))
    if "isolation" in cues:
        xn = F.normalize(x, dim=-1)
        sim = xn @ xn.T  # [N, N]
        sim.fill_diagonal_(-2.0)
        isolation = 1 - sim.topk(min(k, N - 1), dim=1).values.mean(dim=1)  # [N]
        score = torch.maximum(score, _robust_z(isolation))
    flagged = score > z
    cap = max(1, int(max_frac * N))
    if int(flagged.sum()) > cap:
        flagged = torch.zeros_like(flagged)
        flagged[score.topk(cap).indices] = True
    return flagged.reshape(gh, gw)  # [N] -> [gh, gw]


def replace_with_neighbours(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens ``[gh, gw, D]`` with each ``mask``ed one replaced by the mean of its unmasked 3x3 neighbours (kept as is
    when it has none)."""
    if not bool(mask.any()):
        return tokens
    gh, gw, D = tokens.shape
    keep = (~mask).to(tokens.dtype)[None, None]  # [1, 1, gh, gw]
    x = tokens.permute(2, 0, 1)[None] * keep  # [gh, gw, D] -> [1, D, gh, gw]
    ones = torch.ones(1, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    total = F.conv2d(x.reshape(D, 1, gh, gw), ones, padding=1).reshape(D, gh, gw)  # [1, D, gh, gw] -> [D, gh, gw]
    count = F.conv2d(keep, ones, padding=1)[0, 0]  # [gh, gw]
    mean = (total / count.clamp_min(1)).permute(1, 2, 0)  # [D, gh, gw] -> [gh, gw, D]
    use = (mask & (count > 0))[..., None]  # [gh, gw, 1]
    return torch.where(use, mean, tokens)


def filter_distractors(x: torch.Tensor, prev: torch.Tensor | None = None, **kwargs
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Last-block tokens ``x [gh, gw, D]`` (and the block's input ``prev``, same mask) with distractors replaced:
    ``(x, prev, mask [gh, gw])``; ``kwargs`` go to :func:`distractor_mask`."""
    mask = distractor_mask(x, **kwargs)
    x = replace_with_neighbours(x, mask)
    return x, (replace_with_neighbours(prev, mask) if prev is not None else None), mask


def get_method(name: str) -> Method:
    """The registered :class:`Method` called ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown heatmap method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_of(encoder, method: str | None) -> str:
    """``method``, or the encoder's calibrated default when None."""
    return get_method(method if method is not None else encoder.calibration.method).name


def templates_of(encoder, templates: Sequence[str] | None) -> tuple[str, ...]:
    """``templates``, or the encoder's calibrated default when None (``("{}",)`` embeds queries verbatim)."""
    return tuple(templates) if templates is not None else tuple(encoder.calibration.templates)


def supported_methods(encoder) -> list[str]:
    """The methods that work on this encoder's FeatureMaps: all but ``clear-*`` on a 1-block tower, whose input (the
    patch embedding) no FeatureMap holds; those still work from an image (:func:`with_aligned`)."""
    return [m for m, spec in METHODS.items() if not spec.needs_prev or encoder.num_layers >= 2]


def required_layers(method: str) -> tuple[int, ...]:
    """The ``layers=`` a FeatureMap must be extracted with for ``method`` (towers of 2 blocks or more)."""
    return (-2, -1) if get_method(method).needs_prev else (-1,)


def layers_for(encoder, methods: Sequence[str]) -> tuple[int, ...]:
    """One ``layers=`` that serves every method of ``methods`` that a FeatureMap of this encoder can serve."""
    need = {b for m in methods if m in supported_methods(encoder) for b in required_layers(m)}
    return tuple(sorted(need or {-1}))


# ---------------------------------------------------------------------------------------------------------------------
# FeatureMap -> aligned tokens -> scores


def check_featuremap(encoder, fmap: FeatureMap, layers: Sequence[int], what: str) -> torch.Tensor:
    """The tokens of ``layers`` (Python block indices) out of ``fmap``, which must come from ``encoder``.

    Raises ``ValueError`` naming what is missing and how to extract it (``MismatchError`` for another
    encoder's FeatureMap).
    """
    check_featuremap_identity(encoder.spec(), fmap, what)
    if not fmap.has_layers(layers, encoder.num_layers):
        raise ValueError(f"{what} needs blocks {list(layers)} of the encoder; the FeatureMap holds blocks "
                         f"{list(fmap.layers)}: extract it with layers={tuple(layers)}")
    x = fmap.layer_tokens(layers, encoder.num_layers)
    if x.shape[-1] != encoder.hidden_size * len(layers):
        raise ValueError(f"{what}: FeatureMap tokens of dim {x.shape[-1]} do not fit encoder hidden size "
                         f"{encoder.hidden_size} x {len(layers)} blocks")
    return x


def as_featuremap(encoder, image: ImageOrFeatureMap, method: str | None = None, *, max_patches: int | None = None
                  ) -> FeatureMap:
    """A FeatureMap as is, or an image extracted with the layers ``method`` needs."""
    if isinstance(image, FeatureMap):
        return image
    method = method_of(encoder, method)
    layers = required_layers(method) if method in supported_methods(encoder) else (-1,)
    return encoder.extract(image, max_patches=max_patches, layers=layers)


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
        raise ValueError(f"method {method!r} needs the input of the last block; {encoder.name} has only one block, "
                         f"whose input (the patch embedding) no FeatureMap holds: pass the image itself")
    gh, gw = fmap.grid_hw
    vision = encoder.vision
    p = next(vision.parameters())
    tokens = check_featuremap(encoder, fmap, required_layers(method), f"method {method!r}")  # [gh, gw, D * L]
    D = encoder.hidden_size
    x, prev = tokens[..., -D:], (tokens[..., :D] if m.needs_prev else None)  # last block (and its input) [gh, gw, D]
    if m.filter:
        x, prev, _ = filter_distractors(x.float(), None if prev is None else prev.float(),
                                        cues=encoder.calibration.distractor_cues)
    x = x.reshape(gh * gw, D).to(p.device, p.dtype)  # [gh, gw, D] -> [N, D]
    prev = prev.reshape(gh * gw, D).to(p.device, p.dtype) if prev is not None else None  # [gh, gw, D] -> [N, D]
    z = m.fn(vision, x, prev).float().cpu()  # [N, E]
    return F.normalize(z, dim=-1).reshape(gh, gw, -1)  # [N, E] -> [gh, gw, E]


def with_aligned(encoder, image: ImageOrFeatureMap, method: str | None = None, *, max_patches: int | None = None
                 ) -> FeatureMap:
    """A FeatureMap carrying ``aligned`` tokens of ``method`` (computed once; reused by :func:`patch_scores`).

    From an image, ``clear-*`` methods on a 1-block tower also run the patch embedding (the input of that block) here.
    """
    method = method_of(encoder, method)
    if get_method(method).needs_prev and encoder.num_layers < 2 and not isinstance(image, FeatureMap):
        rgb = load_image(image)
        fmap = encoder.extract(rgb, max_patches=max_patches)
        gh, gw = fmap.grid_hw
        p = next(encoder.vision.parameters())
        px = to_pixels(rgb, fmap.grid_hw, encoder.pixels)  # [3, gh*p, gw*p]
        with torch.inference_mode():  # the input of block 0, the patch embedding
            emb, _ = embed_patches(encoder.vision, encoder.family, [px], device=p.device, dtype=p.dtype)  # [1, N, D]
        prev = emb[0].float().cpu().reshape(gh, gw, -1)  # [1, N, D] -> [gh, gw, D]
        x = fmap.tokens.float()  # [gh, gw, D]
        if METHODS[method].filter:
            x, prev, _ = filter_distractors(x, prev, cues=encoder.calibration.distractor_cues)
        x = x.reshape(gh * gw, -1).to(p.device, p.dtype)  # [gh, gw, D] -> [N, D]
        prev = prev.reshape(gh * gw, -1).to(p.device, p.dtype)  # [gh, gw, D] -> [N, D]
        with torch.inference_mode():
            z = METHODS[method].fn(encoder.vision, x, prev).float().cpu()  # [N, E]
        z = F.normalize(z, dim=-1).reshape(gh, gw, -1)  # [N, E] -> [gh, gw, E]
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
            raise ValueError(f"query embeddings must be [T, E], got {tuple(queries.shape)}")
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
        raise ValueError(f"scores {tuple(scores.shape)} do not match the grid {gh}x{gw}")
    size_hw = tuple(size_hw or fmap.image_hw)
    return F.interpolate(scores[None].float(), size=size_hw, mode="bilinear", align_corners=False)[0]  # [T, H, W]


def sliding_window_scores(rgb: np.ndarray, windows: int, crop_scores: Callable[[np.ndarray], torch.Tensor]
                          ) -> torch.Tensor:
    """Scores ``[T, H, W]`` of an image uint8 ``[H, W, 3]`` from an ``windows x windows`` layout of overlapping crops.

    Each crop is ``2 / (windows + 1)`` of the image's height and width (neighbours overlap by half a crop; starts from
    :func:`dense.tiling.window_starts`); ``crop_scores(crop)`` gives its scores ``[T, h, w]`` at the crop's pixels,
    and each pixel gets the mean over the crops that hold it (SCLIP/ClearCLIP's sliding-window inference).
    """
    from dense.tiling import window_starts

    H, W = rgb.shape[:2]
    ch, cw = min(H, -(-2 * H // (windows + 1))), min(W, -(-2 * W // (windows + 1)))
    total, count = None, torch.zeros(H, W)
    for y0 in window_starts(H, ch, n=windows):
        for x0 in window_starts(W, cw, n=windows):
            s = crop_scores(np.ascontiguousarray(rgb[y0:y0 + ch, x0:x0 + cw]))  # [T, ch, cw]
            if total is None:
                total = torch.zeros(s.shape[0], H, W)  # [T, H, W]
            total[:, y0:y0 + ch, x0:x0 + cw] += s
            count[y0:y0 + ch, x0:x0 + cw] += 1
    return total / count  # every pixel lies in at least one crop


def image_scores(encoder, image: ImageOrFeatureMap, queries, *, features: FeatureMap | None = None,
                 method: str | None = None, templates: Sequence[str] | None = None, max_patches: int | None = None,
                 windows: int = 1, refine: str | None = None) -> torch.Tensor:
    """Sigmoid scores ``[T, H, W]`` at the original image size: :func:`patch_scores` upsampled, with two options.

    ``windows=n`` (n >= 2): sliding windows for images with more detail than the token budget holds. The image is
    cut into an n x n layout of crops of ``2 / (n + 1)`` of its height and width (neighbours overlap by half a crop),
    each crop is extracted at ``max_patches`` and scored, and the upsampled scores are averaged where crops overlap
    (SCLIP/ClearCLIP's sliding-window inference). ``refine="pamr"``: :func:`dense.refine.pamr` with the image, at the
    encoder's input resolution (times ``windows``), then upsampled.

    ``image``: a path, PIL image or uint8 array (read with :func:`dense.preprocess.load_image`), or a FeatureMap when
    neither option needs the pixels. ``features``: the image's FeatureMap, already extracted (used as is when
    ``windows == 1``).
    """
    from dense.preprocess import choose_grid
    from dense.refine import REFINES, pamr

    refine = None if refine in (None, "none") else refine
    if refine is not None and refine not in REFINES:
        raise ValueError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINES)}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if isinstance(image, FeatureMap):
        if features is not None:
            raise ValueError("image is a FeatureMap and features= is given too: pass the image itself as image")
        image, features = None, image
    if features is not None:  # even when windows re-extract from the pixels: never mix in another encoder's map
        check_featuremap_identity(encoder.spec(), features, "image_scores")
    if image is None and (windows > 1 or refine is not None):
        raise ValueError("windows > 1 and refine need the image's pixels: pass the image as image= (and its "
                         "FeatureMap as features=)")
    rgb = None if image is None else load_image(image)
    if rgb is not None and features is not None and tuple(rgb.shape[:2]) != tuple(features.image_hw):
        raise ValueError(f"image is {tuple(rgb.shape[:2])}, its FeatureMap (features=) was made from "
                         f"{tuple(features.image_hw)}")
    text = text_matrix(encoder, queries, templates)  # [T, E]
    budget = max_patches or encoder.pixels.max_patches
    if windows == 1:
        fmap = features if features is not None else with_aligned(encoder, rgb, method, max_patches=max_patches)
        scores = patch_scores(encoder, fmap, text, method=method)  # [T, gh, gw]
        if refine is None:
            return to_image(scores, fmap)  # [T, H, W]
        H, W = fmap.image_hw
        probs = to_image(scores, fmap, size_hw=fmap.resized_hw)  # [T, gh * p, gw * p]
    else:
        H, W = rgb.shape[:2]

        def crop_scores(crop: np.ndarray) -> torch.Tensor:
            f = with_aligned(encoder, crop, method, max_patches=max_patches)
            return to_image(patch_scores(encoder, f, text, method=method), f)  # [T, h, w]

        probs = sliding_window_scores(rgb, windows, crop_scores)  # [T, H, W]
        if refine is None:
            return probs
        gh, gw = choose_grid((H, W), encoder.patch_size, budget)
        work_hw = (min(H, gh * encoder.patch_size * windows), min(W, gw * encoder.patch_size * windows))
        probs = F.interpolate(probs[None], size=work_hw, mode="bilinear", align_corners=False, antialias=True)[0]
    probs = pamr(rgb, probs)  # [T, h, w]
    return F.interpolate(probs[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # [T, H, W]

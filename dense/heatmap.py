"""Text-aligned dense scores, zero-shot classification and training-free open-vocabulary segmentation.

SigLIP has no CLS token: the image embedding is the MAP head's output,
``y = out_proj(sum_n a_n v_n); e = y + mlp(layernorm(y))`` with one learned probe query attending over the
last-layer tokens ``x_n`` (after ``post_layernorm``), ``v_n = W_v x_n + b_v``. Each method below turns the tokens of a
:class:`~dense.FeatureMap` into one vector ``z_n`` per patch in the text embedding space; a patch's score for a query
``t`` is then ``sigmoid(exp(logit_scale) * cos(z_n, t) + logit_bias)`` with the checkpoint's own calibration.

Methods (``METHODS``; every one needs the last block's output, ``clear-*`` also its input, see ``required_layers``):

- ``raw``: ``z_n = x_n``. The baseline: the tokens were never trained to sit in the text space.
- ``map-value``: ``z_n = out_proj(v_n)``, the head's output if all its attention were on patch n (MaskCLIP's trick).
- ``map-value-mlp``: the same followed by the head's MLP residual ``z + mlp(layernorm(z))``.
- ``attn-value``: patch n's share of the pooled vector, ``z_n = N * out_proj_nobias(a_n v_n) + b_out`` (per head
  ``a_{h,n}``), then the MLP residual. With uniform attention it is ``map-value-mlp``; patches the probe ignores
  shrink towards the bias, so their scores fall towards a query-independent floor.
- ``leave-one-out``: ``z_n = e - e_{-n}`` where ``e_{-n}`` is the head's output with patch n masked out of its
  attention (closed form, one pass): the direction in which patch n moves the image embedding. For a linear head under
  uniform attention it is ``out_proj(v_n)`` minus the mean over patches (a centred map-value).
- ``clear-map-value`` / ``clear-map-value-mlp``: ClearCLIP/SCLIP adapted to SigLIP. The LAST block is re-run on its
  input with self-self attention (``softmax(q q^T) + softmax(k k^T)``, SCLIP's correlative attention), no residual, no
  MLP; ``post_layernorm`` is applied (the MAP head expects it), then ``map-value`` / ``map-value-mlp``. Needs the
  FeatureMap to hold block ``num_layers - 2`` (``encoder.extract(image, layers=(-2, -1))``); images passed directly
  are extracted that way.

Measured on the synthetic shapes world (``make_shapes(dir, 300, seed=7)``, 45 val + 45 test images, 16 categories)
with the bundled ``shapes-tiny`` (2 vision blocks), ``dense eval openvocab --methods all --sweep ...``; background
threshold chosen per method on val, mIoU (17 classes incl. background) reported on test at that threshold; pointing =
each present class's peak patch inside its object (about 95 queries per split):

    method               val thr  val mIoU  test mIoU  pointing val / test
    raw                  >=0.005  0.051     0.052      0.25 / 0.30   (raw probabilities are all ~0: all background)
    map-value            0.2      0.145     0.174      0.42 / 0.50
    map-value-mlp        0.5      0.162     0.176      0.51 / 0.48
    attn-value           0.4      0.173     0.184      0.41 / 0.34
    leave-one-out        0.05     0.072     0.063      0.46 / 0.48
    clear-map-value      0.2      0.116     0.110      0.60 / 0.63
    clear-map-value-mlp  0.3      0.145     0.146      0.60 / 0.57

``DEFAULT_METHOD = "map-value-mlp"``: among the methods that read a plain last-layer FeatureMap (what
``encoder.extract(image)`` returns), it has the best val pointing and the second-best val mIoU (``attn-value``'s is
higher by 0.01, but its pointing is the worst but one). The ``clear-*`` variants point (and localize: Acc@0.5 0.34 vs
0.26 on the referring test split) better on this 2-block model, but need the last block's input
(``encoder.extract(image, layers=(-2, -1))``) and segment worse; ask for them by name. With 45 images a split,
differences of a few points are noise. On the earlier 1-block ``shapes-tiny`` the ranking was different (``map-value``
pointed best, ``clear-*`` worst): re-measure on your own checkpoint with ``dense eval openvocab --methods all``.
``DEFAULT_BACKGROUND = 0.5`` is map-value-mlp's val-chosen threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dense._atomic import write_json
from dense.features import FeatureMap
from dense.text import DEFAULT_TEMPLATES, embed_texts

DEFAULT_METHOD = "map-value-mlp"  # measured on shapes-tiny: see the module docstring
DEFAULT_BACKGROUND = 0.5  # background probability threshold for DEFAULT_METHOD, chosen on shapes-tiny val


@dataclass(frozen=True)
class Method:
    """A way to turn last-layer tokens into text-comparable patch vectors."""

    name: str
    fn: Callable  # (vision model, x_last [N, D], x_prev [N, D] | None) -> z [N, E] (not normalized)
    needs_prev: bool = False  # needs the input of the last block (block num_layers - 2)
    doc: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# The pieces of the MAP head (reused from transformers' module: nn.MultiheadAttention, layernorm, mlp)


def _value(head, x: torch.Tensor) -> torch.Tensor:
    """``[N, D] -> [N, D]``: the head's value projection (third block of ``in_proj``)."""
    D = x.shape[-1]
    att = head.attention
    return F.linear(x, att.in_proj_weight[2 * D:], att.in_proj_bias[2 * D:])


def _mlp_residual(head, z: torch.Tensor) -> torch.Tensor:
    return z + head.mlp(head.layernorm(z))


def _attention(head, x: torch.Tensor) -> torch.Tensor:
    """The probe's attention weights per head ``[H, N]`` over tokens ``x [N, D]``."""
    probe = head.probe.to(x.dtype)  # [1, 1, D]
    _, w = head.attention(probe, x[None], x[None], need_weights=True, average_attn_weights=False)  # w [1, H, 1, N]
    return w[0, :, 0]  # [1, H, 1, N] -> [H, N]


def pooled(vision, x: torch.Tensor) -> torch.Tensor:
    """Last-layer tokens ``[N, D]`` (or ``[B, N, D]``) -> the MAP head's image embedding ``[E]`` (``[B, E]``)."""
    return vision.head(x) if x.ndim == 3 else vision.head(x[None])[0]


def _raw(vision, x, prev):
    return x


def _map_value(vision, x, prev):
    return vision.head.attention.out_proj(_value(vision.head, x))


def _map_value_mlp(vision, x, prev):
    return _mlp_residual(vision.head, _map_value(vision, x, prev))


def _attention_and_values(head, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's attention ``[H, N]`` and the per-head values ``[N, H, hd]`` of tokens ``x [N, D]``."""
    N, D = x.shape
    H = head.attention.num_heads
    return _attention(head, x), _value(head, x).reshape(N, H, D // H)  # [N, D] -> [N, H, hd]


def _attn_value(vision, x, prev):
    head = vision.head
    N, D = x.shape
    a, v = _attention_and_values(head, x)  # [H, N], [N, H, hd]
    c = (a.T[..., None] * v).reshape(N, D)  # [N, H, 1] * [N, H, hd] -> [N, H, hd] -> [N, D]
    out = head.attention.out_proj
    z = N * F.linear(c, out.weight) + out.bias  # [N, D]
    return _mlp_residual(head, z)


def _leave_one_out(vision, x, prev):
    head = vision.head
    N, D = x.shape
    a, v = _attention_and_values(head, x)  # [H, N], [N, H, hd]
    total = torch.einsum("hn,nhd->hd", a, v)  # [H, hd]: sum_n a_{h,n} v_{h,n}
    keep = (1 - a.T).clamp_min(1e-6)[..., None]  # [N, H, 1]: attention mass left when patch n is masked out
    y_minus = (total[None] - a.T[..., None] * v) / keep  # [N, H, hd]: renormalized attention without patch n
    e_minus = _mlp_residual(head, head.attention.out_proj(y_minus.reshape(N, D)))  # [N, H, hd] -> [N, D] -> [N, E]
    e = pooled(vision, x)  # [E]
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


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def supported_methods(encoder) -> list[str]:
    """The methods that work on this encoder's FeatureMaps: all but ``clear-*`` on a 1-block tower, whose input (the
    patch embedding) no FeatureMap holds; those still work from an image (:func:`with_aligned`)."""
    return [m for m, spec in METHODS.items() if not spec.needs_prev or encoder.num_layers >= 2]


def _check_supported(encoder, method: str) -> Method:
    m = _method(method)
    if m.needs_prev and encoder.num_layers < 2:
        raise ValueError(f"method {method!r} needs the input of the last block; {encoder.name} has only "
                         f"{encoder.num_layers} block, whose input (the patch embedding) no FeatureMap holds: pass "
                         f"the image itself (patch_scores / with_aligned compute it)")
    return m


@torch.inference_mode()
def _embedding_tokens(encoder, rgb: np.ndarray, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The patch embedding (+ position embedding) of an image, the input of block 0: ``[gh, gw, D]`` float32 CPU."""
    from dense.preprocess import patchify, to_pixels

    gh, gw = grid_hw
    p = next(encoder.vision.parameters())
    px = to_pixels(rgb, grid_hw, encoder.pixels)[None].to(p.device, p.dtype)  # [1, 3, gh*P, gw*P]
    if encoder.family == "siglip":
        emb = encoder.vision.embeddings(px, interpolate_pos_encoding=True)  # [1, N, D]
    else:
        emb = encoder.vision.embeddings(patchify(px, encoder.patch_size), torch.tensor([[gh, gw]], device=p.device))
    return emb[0].float().cpu().reshape(gh, gw, -1)  # [1, N, D] -> [gh, gw, D]


def required_layers(method: str = DEFAULT_METHOD) -> tuple[int, ...]:
    """The ``layers=`` a FeatureMap must be extracted with for ``method`` (towers of 2 blocks or more)."""
    return (-2, -1) if _method(method).needs_prev else (-1,)


# ---------------------------------------------------------------------------------------------------------------------
# FeatureMap -> aligned tokens -> scores


def _block_tokens(encoder, fmap: FeatureMap, block: int, method: str) -> torch.Tensor:
    """The ``[gh, gw, D]`` slice of ``fmap.tokens`` holding block ``block`` (absolute index)."""
    if block not in fmap.layers:
        raise ValueError(f"method {method!r} needs block {block} in the FeatureMap, which holds layers {fmap.layers}; "
                         f"extract with layers={required_layers(method)}")
    D = encoder.hidden_size
    if fmap.tokens.shape[-1] != D * len(fmap.layers):
        raise ValueError(f"FeatureMap of dim {fmap.dim} does not match encoder hidden size {D} x {len(fmap.layers)}")
    return fmap.layer_tokens([block])


def as_featuremap(encoder, fmap_or_image, method: str = DEFAULT_METHOD, *, max_patches: int | None = None
                  ) -> FeatureMap:
    """A FeatureMap as is, or an image extracted with the layers ``method`` needs."""
    if isinstance(fmap_or_image, FeatureMap):
        return fmap_or_image
    if _method(method).needs_prev and encoder.num_layers < 2:
        return encoder.extract(fmap_or_image, max_patches=max_patches)  # the input of block 0: see with_aligned
    return encoder.extract(fmap_or_image, max_patches=max_patches, layers=required_layers(method))


@torch.inference_mode()
def aligned_tokens(encoder, fmap: FeatureMap, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """Unit-normalized text-comparable patch vectors ``[gh, gw, E]`` (float32, CPU).

    ``fmap`` must hold the last block (``layers`` containing -1, the default) and, for ``clear-*`` methods, also block
    ``num_layers - 2`` (``encoder.extract(image, layers=(-2, -1))``). A FeatureMap made by :func:`with_aligned` for the
    same method returns its stored tokens.
    """
    if fmap.aligned is not None and fmap.encoder.get("aligned_method") == _method(method).name:
        return fmap.aligned
    m = _check_supported(encoder, method)
    n = encoder.num_layers
    gh, gw = fmap.grid_hw
    vision = encoder.vision
    p = next(vision.parameters())
    x = _block_tokens(encoder, fmap, n - 1, method).reshape(gh * gw, -1)  # [gh, gw, D] -> [N, D]
    prev = _block_tokens(encoder, fmap, n - 2, method).reshape(gh * gw, -1) if m.needs_prev else None  # [N, D]
    x = x.to(p.device, p.dtype)
    prev = None if prev is None else prev.to(p.device, p.dtype)
    z = m.fn(vision, x, prev).float().cpu()  # [N, E]
    return F.normalize(z, dim=-1).reshape(gh, gw, -1)  # [N, E] -> [gh, gw, E]


def with_aligned(encoder, fmap_or_image, method: str = DEFAULT_METHOD, *, max_patches: int | None = None
                 ) -> FeatureMap:
    """A FeatureMap carrying ``aligned`` tokens of ``method`` (computed once; reused by :func:`patch_scores`).

    From an image, ``clear-*`` methods on a 1-block tower also run the patch embedding (the input of that block) here.
    """
    m = _method(method)
    if m.needs_prev and encoder.num_layers < 2 and not isinstance(fmap_or_image, FeatureMap):
        from dense.preprocess import load_image

        rgb = load_image(fmap_or_image)
        fmap = encoder.extract(rgb, max_patches=max_patches)
        gh, gw = fmap.grid_hw
        p = next(encoder.vision.parameters())
        x = fmap.tokens.reshape(gh * gw, -1).to(p.device, p.dtype)  # [gh, gw, D] -> [N, D]
        prev = _embedding_tokens(encoder, rgb, fmap.grid_hw).reshape(gh * gw, -1).to(p.device, p.dtype)  # [N, D]
        with torch.inference_mode():
            z = F.normalize(m.fn(encoder.vision, x, prev).float().cpu(), dim=-1).reshape(gh, gw, -1)  # [gh, gw, E]
    else:
        fmap = as_featuremap(encoder, fmap_or_image, method, max_patches=max_patches)
        z = aligned_tokens(encoder, fmap, method)
    return replace(fmap, aligned=z, encoder={**fmap.encoder, "aligned_method": method})


def _calibration(encoder) -> tuple[float, float]:
    parts = encoder.text_parts()
    return float(parts.logit_scale.exp()), float(parts.logit_bias)


def _text_matrix(encoder, queries, templates) -> torch.Tensor:
    """Queries (a string, strings, or precomputed unit embeddings ``[T, E]``) -> ``[T, E]``."""
    if isinstance(queries, torch.Tensor):
        if queries.ndim != 2:
            raise ValueError(f"query embeddings must be [T, E], got {tuple(queries.shape)}")
        return queries.float()
    return embed_texts(encoder, queries, templates=templates)


def logits(encoder, image_or_patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Unit vectors ``[..., E]`` x text ``[T, E]`` -> ``[T, ...]`` logits ``exp(scale) * cos + bias``."""
    scale, bias = _calibration(encoder)
    cos = torch.einsum("...e,te->t...", image_or_patch_emb.float(), text_emb.float())  # [T, ...]
    return cos * scale + bias


def patch_scores(encoder, fmap_or_image, queries, *, method: str = DEFAULT_METHOD,
                 templates: Sequence[str] | None = None) -> torch.Tensor:
    """Per-patch sigmoid probabilities ``[T, gh, gw]`` for text queries, with the checkpoint's logit scale and bias.

    ``fmap_or_image``: a FeatureMap (see :func:`aligned_tokens` for the layers each method needs) or an image (extracted
    here with those layers). ``queries``: a string, a list of strings (embedded with ``templates``; ``None`` =
    verbatim), or unit text embeddings ``[T, E]`` from :func:`dense.text.embed_texts`.
    """
    fmap = fmap_or_image if isinstance(fmap_or_image, FeatureMap) else with_aligned(encoder, fmap_or_image, method)
    z = aligned_tokens(encoder, fmap, method)  # [gh, gw, E]
    text = _text_matrix(encoder, queries, templates)  # [T, E]
    return torch.sigmoid(logits(encoder, z, text))  # [T, gh, gw]


def upsample(scores: torch.Tensor, fmap: FeatureMap, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Patch scores ``[T, gh, gw]`` -> ``[T, H, W]`` at the original image size (or ``size_hw``), bilinear.

    Same geometry as :meth:`FeatureMap.to_image`: the grid tiles the resized image, ``align_corners=False`` puts each
    value at its patch centre.
    """
    gh, gw = fmap.grid_hw
    if tuple(scores.shape[-2:]) != (gh, gw):
        raise ValueError(f"scores {tuple(scores.shape)} do not match the grid {gh}x{gw}")
    size_hw = tuple(size_hw or fmap.image_hw)
    return F.interpolate(scores[None].float(), size=size_hw, mode="bilinear", align_corners=False)[0]  # [T, H, W]


# ---------------------------------------------------------------------------------------------------------------------
# Global embeddings: classification and retrieval


@torch.inference_mode()
def embed_images(encoder, images, *, max_patches: int | None = None) -> torch.Tensor:
    """Images (or FeatureMaps holding the last block) -> unit MAP-pooled image embeddings ``[B, E]``.

    A single image gives ``[1, E]``. Equals transformers' ``pooler_output`` for the same pixels.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    vision = encoder.vision
    p = next(vision.parameters())
    out = []
    for im in images:
        fmap = as_featuremap(encoder, im, "map-value", max_patches=max_patches)
        x = _block_tokens(encoder, fmap, encoder.num_layers - 1, "pooling").reshape(-1, encoder.hidden_size)  # [N, D]
        out.append(pooled(vision, x.to(p.device, p.dtype)).float().cpu())  # [E]
    return F.normalize(torch.stack(out), dim=-1)  # [B, E]


def classify(encoder, image, labels: str | Sequence[str], *, templates: Sequence[str] | None = DEFAULT_TEMPLATES,
             max_patches: int | None = None) -> torch.Tensor:
    """Zero-shot sigmoid probabilities ``[T]`` that ``image`` (path, PIL, array or FeatureMap) shows each label.

    Independent per label (SigLIP's sigmoid, not a softmax): they need not sum to one. A list of images: ``[B, T]``.
    """
    batch = isinstance(image, (list, tuple))
    img = embed_images(encoder, image, max_patches=max_patches)  # [B, E]
    text = embed_texts(encoder, labels, templates=templates)  # [T, E]
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
        raise ValueError(f"by must be 'text' or 'image', got {by!r}")
    return sim.topk(min(k, sim.shape[1]), dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Open-vocabulary segmentation


def segment(encoder, image, class_names: Sequence[str], *, background: float | Sequence[str] | None = None,
            method: str = DEFAULT_METHOD, templates: Sequence[str] | None = DEFAULT_TEMPLATES,
            max_patches: int | None = None) -> np.ndarray:
    """Training-free semantic segmentation at the original resolution: int32 ``[H, W]``, 0 = background, ``k + 1`` =
    ``class_names[k]``.

    ``background``: ``None`` labels every pixel with its best class (``argmax``); a float labels background where the
    best class's upsampled probability is below it; a list of background prompts (``["background", "sky"]``) competes
    with the classes in the argmax and wins as 0. ``image``: path, PIL, array or FeatureMap.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    bg_prompts = _background_prompts(background)
    fmap = image if isinstance(image, FeatureMap) else with_aligned(encoder, image, method, max_patches=max_patches)
    probs = upsample(patch_scores(encoder, fmap, class_names + bg_prompts, method=method, templates=templates),
                     fmap)  # [C + B, H, W]
    return labels_from_scores(probs, len(class_names), background)


def _background_prompts(background) -> list[str]:
    if background is None or isinstance(background, (int, float)):
        return []
    if isinstance(background, str):
        return [background]
    return list(background)


def labels_from_scores(probs: torch.Tensor, num_classes: int, background: float | Sequence[str] | None = None
                       ) -> np.ndarray:
    """Scores ``[C (+ B background prompts), H, W]`` -> int32 labels ``[H, W]``: 0 background, ``k + 1`` class k.

    The rule of :func:`segment` (``background``: None, a probability threshold, or prompts scored after the classes).
    """
    best, arg = probs[:num_classes].max(dim=0)  # [H, W]
    labels = arg.to(torch.int32) + 1
    if probs.shape[0] > num_classes:
        labels[probs[num_classes:].max(dim=0).values > best] = 0
    elif background is not None:
        labels[best < float(background)] = 0
    return labels.numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def add_cli(sub, eval_sub) -> None:
    p = sub.add_parser("heatmap", help="open-vocabulary heatmaps of text queries over an image (PNG figure)")
    p.add_argument("image")
    p.add_argument("queries", nargs="+", help="text queries, e.g. 'red circle' 'a dog'")
    p.add_argument("--model", default="shapes-tiny")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    p.add_argument("--out", default="heatmap.png", help="PNG to write")
    p.set_defaults(func=_cli_heatmap)

    g = sub.add_parser("segment", help="open-vocabulary segmentation of one image (label-map PNG with legend)")
    g.add_argument("image")
    g.add_argument("classes", nargs="+", help="class names, e.g. 'red circle' 'blue star'")
    g.add_argument("--model", default="shapes-tiny")
    g.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    g.add_argument("--background", default=str(DEFAULT_BACKGROUND),
                   help="a probability threshold, 'none', or comma-separated prompts")
    g.add_argument("--out", default="segment.png", help="PNG to write")
    g.set_defaults(func=_cli_segment)

    e = eval_sub.add_parser("openvocab", help="open-vocabulary segmentation mIoU on a COCO-style dataset")
    e.add_argument("--ann", required=True, help="COCO instances JSON")
    e.add_argument("--images", required=True, help="image folder")
    e.add_argument("--model", default="shapes-tiny")
    e.add_argument("--methods", default=DEFAULT_METHOD,
                   help=f"comma-separated methods ({', '.join(METHODS)}) or 'all'")
    e.add_argument("--split", default=None, help="only images of this split (the 'split' field), e.g. val")
    e.add_argument("--background", default=str(DEFAULT_BACKGROUND),
                   help="a probability threshold, 'none', or comma-separated background prompts")
    e.add_argument("--templates", default="default", help="'default', 'none' (verbatim), or '|'-separated templates")
    e.add_argument("--sweep", default="", help="comma-separated background thresholds to sweep too (mIoU each)")
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    e.add_argument("--max-patches", type=int, default=None)
    e.add_argument("--out", default=None, help="JSON to write (atomically)")
    e.set_defaults(func=_cli_openvocab)


def _parse_background(text: str):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        return [t.strip() for t in text.split(",") if t.strip()]


def _parse_templates(text: str):
    if text == "default":
        return DEFAULT_TEMPLATES
    if text == "none":
        return None
    return tuple(text.split("|"))


def _cli_heatmap(args) -> int:
    import dense
    from dense import viz

    enc = dense.load_encoder(args.model)
    fmap = with_aligned(enc, args.image, args.method)
    scores = upsample(patch_scores(enc, fmap, args.queries, method=args.method, templates=DEFAULT_TEMPLATES), fmap)
    from dense.preprocess import load_image

    fig = viz.heatmaps(load_image(args.image), scores.numpy(), args.queries)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


def _cli_segment(args) -> int:
    import dense
    from dense import viz
    from dense.preprocess import load_image

    enc = dense.load_encoder(args.model)
    labels = segment(enc, args.image, args.classes, background=_parse_background(args.background), method=args.method)
    viz.label_map(load_image(args.image), labels, args.classes).savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


def evaluate_openvocab(encoder, ann: str | Path, images: str | Path, *, methods: Sequence[str] = (DEFAULT_METHOD,),
                       background=DEFAULT_BACKGROUND, templates=DEFAULT_TEMPLATES, split: str | None = None,
                       limit: int | None = None, max_patches: int | None = None,
                       thresholds: Sequence[float] = ()) -> dict:
    """mIoU (and pixel accuracy) of :func:`segment` per method on a COCO-style dataset, plus pointing accuracy.

    Category names are the queries (``dense.coco`` label k + 1 = category k). Pointing: for every (image, category
    present), is the centre of the peak patch of that category's scores inside one of its (non-crowd) masks?
    ``thresholds``: background thresholds to sweep as well (mIoU each, under ``"sweep"``), to choose one on a
    validation split. Returns ``{"methods": {method: {"miou", "pixel_acc", "pointing", "n_points", "figures",
    "sweep"}}, "n_images", ...}``.
    """
    from dense import coco, metrics

    methods = list(methods)
    for m in methods:
        _method(m)
    ds = coco.load_coco(ann, images)
    ids = ds.ids(split)[:limit] if limit is not None else ds.ids(split)
    names = ds.class_names[1:]  # label k + 1 <-> names[k], as in dense.coco
    bg_prompts = _background_prompts(background)
    two = encoder.num_layers >= 2
    layers = (-2, -1) if two and any(_method(m).needs_prev for m in methods) else (-1,)
    text = embed_texts(encoder, names + bg_prompts, templates=templates)  # [C + B, E], once for the whole run
    meters = {m: metrics.SegmentationMeter(ds.class_names) for m in methods}
    sweep = {(m, t): metrics.SegmentationMeter(ds.class_names) for m in methods for t in thresholds}
    hits: dict[str, list[bool]] = {m: [] for m in methods}
    for iid in ids:
        gt = ds.label_map(iid)  # [H, W] uint8, 255 = ignore
        fmap = encoder.extract(ds.image_path(iid), max_patches=max_patches, layers=layers)
        if tuple(gt.shape) != tuple(fmap.image_hw):
            raise ValueError(f"{ds.image_path(iid)}: image is {fmap.image_hw}, annotation says {gt.shape}")
        by_cat: dict[int, np.ndarray] = {}
        for a in ds.anns(iid, crowd=False):
            k = ds.cat_to_label[a["category_id"]] - 1
            by_cat[k] = by_cat.get(k, False) | ds.mask(a["id"])
        for m in methods:
            one_block_clear = _method(m).needs_prev and encoder.num_layers < 2  # needs the image: one more pass
            src = with_aligned(encoder, ds.image_path(iid), m, max_patches=max_patches) if one_block_clear else fmap
            scores = patch_scores(encoder, src, text, method=m)  # [C + B, gh, gw]
            probs = upsample(scores, fmap)  # [C + B, H, W]
            meters[m].update(labels_from_scores(probs, len(names), background), gt)
            for t in thresholds:
                sweep[(m, t)].update(labels_from_scores(probs[: len(names)], len(names), t), gt)
            for k, mask in by_cat.items():
                ij = np.unravel_index(int(scores[k].argmax()), fmap.grid_hw)  # peak patch (i, j)
                point_xy = fmap.grid_to_pixel_xy(np.array(ij, dtype=np.float64))
                hits[m].append(bool(metrics.pointing_hits(point_xy[None], [mask])[0]))
    out = {"methods": {}, "n_images": len(ids), "ann": str(ann), "split": split, "background": background,
           "templates": None if templates is None else list(templates), "encoder": encoder.name}
    for m in methods:
        fig = meters[m].figures()
        out["methods"][m] = {"miou": fig["mIoU"], "pixel_acc": fig["pixel_acc"],
                             "pointing": float(np.mean(hits[m])) if hits[m] else float("nan"),
                             "n_points": len(hits[m]), "figures": fig,
                             "sweep": {str(t): sweep[(m, t)].figures()["mIoU"] for t in thresholds}}
    return out


def _cli_openvocab(args) -> int:
    import dense

    enc = dense.load_encoder(args.model)
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    for m in methods:
        _method(m)
    res = evaluate_openvocab(enc, args.ann, args.images, methods=methods, background=_parse_background(args.background),
                             templates=_parse_templates(args.templates), split=args.split, limit=args.limit,
                             max_patches=args.max_patches,
                             thresholds=[float(t) for t in args.sweep.split(",") if t.strip()])
    print(f"{res['n_images']} images, background {args.background}, templates {args.templates}")
    print(f"{'method':<22}{'mIoU':>8}{'pixAcc':>8}{'point':>8}  {'sweep thr:mIoU' if args.sweep else ''}")
    for m, r in res["methods"].items():
        sweep = "  ".join(f"{t}:{v:.3f}" for t, v in r["sweep"].items())
        print(f"{m:<22}{r['miou']:8.3f}{r['pixel_acc']:8.3f}{r['pointing']:8.3f}  {sweep}")
    if args.out:
        print(f"wrote {write_json(args.out, res, indent=2)}")
    return 0


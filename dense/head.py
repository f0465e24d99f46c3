"""The pieces of SigLIP's MAP pooling head, reused from transformers' module (no copy of its weights or code paths).

SigLIP has no CLS token: the image embedding is the head's output,
``y = out_proj(sum_n a_n v_n); e = y + mlp(layernorm(y))``, one learned probe query attending over the last block's
tokens ``x_n`` (after ``post_layernorm``) with ``v_n = W_v x_n + b_v``. ``head`` below is transformers'
``SiglipMultiheadAttentionPoolingHead`` (``probe``, ``attention`` = ``nn.MultiheadAttention``, ``layernorm``, ``mlp``).

Precision: the tower may run in bf16, but the head pieces and everything after them run in float32
(:func:`fp32_parts`, :func:`as_fp32`). Leave-one-out subtracts terms that differ by ~1/N of the pooled vector, below
the resolution of bf16's 8-bit significand once N is in the hundreds, and fp16 can overflow in ``q @ q^T`` before the
scale; ``benchmarks/heatmap_dtype.py`` prints the bf16-vs-fp32 agreement of every heatmap method.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dense.errors import InputError
from dense.features import FeatureMap

# module -> (signature of its parameters, its float32 copy); see as_fp32
_FP32: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p.device, p.dtype, p._version) for p in module.parameters())


def as_fp32(module: nn.Module | None) -> nn.Module | None:
    """``module`` itself when its parameters are float32 (or it has none), else a float32 copy on the same device,
    kept until the module's parameters change (moved, cast or updated in place); frozen (no gradients)."""
    if module is None or all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    sig = _signature(module)
    hit = _FP32.get(module)
    if hit is not None and hit[0] == sig:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable outside inference mode too
        fp32 = copy.deepcopy(module).float().requires_grad_(False).eval()
    _FP32[module] = (sig, fp32)
    return fp32


@dataclass(frozen=True)
class HeadParts:
    """The modules the heatmap methods read (:mod:`dense.heatmap.methods`): the MAP head, the last block's first layer
    norm and attention (``clear-*`` methods re-run it), and the tower's ``post_layernorm``."""

    head: nn.Module | None
    last_norm: nn.Module
    last_attn: nn.Module
    post_layernorm: nn.Module

    @classmethod
    def of(cls, vision) -> HeadParts:
        """The vision model's own modules, in its dtype (differentiable: what training reads)."""
        block = vision.encoder.layers[-1]
        return cls(getattr(vision, "head", None), block.layer_norm1, block.self_attn, vision.post_layernorm)


def fp32_parts(vision) -> HeadParts:
    """:meth:`HeadParts.of` in float32 on the model's device (:func:`as_fp32`): what scoring reads."""
    parts = HeadParts.of(vision)
    return HeadParts(*(as_fp32(m) for m in (parts.head, parts.last_norm, parts.last_attn, parts.post_layernorm)))


def value(head, x: torch.Tensor) -> torch.Tensor:
    """``[N, D] -> [N, D]``: the head's value projection (third block of ``in_proj``)."""
    D = x.shape[-1]
    att = head.attention
    return F.linear(x, att.in_proj_weight[2 * D:], att.in_proj_bias[2 * D:])


def mlp_residual(head, z: torch.Tensor) -> torch.Tensor:
    """``z + mlp(layernorm(z))``: the head's step after attention."""
    return z + head.mlp(head.layernorm(z))


def attention(head, x: torch.Tensor) -> torch.Tensor:
    """The probe's attention weights per head ``[H, N]`` over tokens ``x [N, D]``."""
    probe = head.probe.to(x.dtype)  # [1, 1, D]
    _, w = head.attention(probe, x[None], x[None], need_weights=True, average_attn_weights=False)  # w [1, H, 1, N]
    return w[0, :, 0]  # [1, H, 1, N] -> [H, N]


def attention_and_values(head, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's attention ``[H, N]`` and the per-head values ``[N, H, hd]`` of tokens ``x [N, D]``."""
    N, D = x.shape
    H = head.attention.num_heads
    return attention(head, x), value(head, x).reshape(N, H, D // H)  # [N, D] -> [N, H, hd]


def pooled(head, x: torch.Tensor) -> torch.Tensor:
    """Last-block tokens ``[N, D]`` (or ``[B, N, D]``) -> the head's image embedding ``[E]`` (``[B, E]``)."""
    return head(x) if x.ndim == 3 else head(x[None])[0]


@torch.inference_mode()
def pooled_fp32(head, x: torch.Tensor) -> torch.Tensor:
    """:func:`pooled` in float32 (:func:`as_fp32`) where the head is: last-block tokens ``[N, D]`` -> ``[E]``
    (float32, CPU; not normalized)."""
    head = as_fp32(head)
    return pooled(head, x.to(next(head.parameters()).device, torch.float32)).cpu()


@torch.inference_mode()
def pool_with_weights(head, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The head (in float32, :func:`as_fp32`) with its attention restricted by per-region patch weights: ``[K, E]``
    (not normalized).

    ``tokens``: ``[gh, gw, D]`` last-block tokens. ``weights``: ``[K, gh, gw]`` in [0, 1] (0 = not attended).
    The K regions are K queries (all equal to the probe) of ONE ``nn.MultiheadAttention`` call over the same keys,
    with the additive mask ``log(weight)`` (``[K, N]``, broadcast over heads), then ``h + mlp(layernorm(h))`` as in
    transformers. A region of all-ones weights gives exactly the head's output on the whole image.
    """
    gh, gw, D = tokens.shape
    K = weights.shape[0]
    head = as_fp32(head)
    p = next(head.parameters())
    x = tokens.reshape(1, gh * gw, D).to(p.device, torch.float32)  # [gh, gw, D] -> [1, N, D]
    w = weights.reshape(K, gh * gw).to(p.device, torch.float32)  # [K, gh, gw] -> [K, N]
    if bool((w.max(dim=1).values <= 0).any()):
        raise InputError("every region needs at least one patch with a positive weight")
    mask = torch.log(w.clamp(min=0))  # [K, N]: 0 inside, log(frac) on the border, -inf outside
    probe = head.probe.expand(1, K, D)  # [1, 1, D] -> [1, K, D]
    h = head.attention(probe, x, x, attn_mask=mask, need_weights=False)[0]  # [1, K, D]
    h = mlp_residual(head, h)
    return h[0].float().cpu()  # [1, K, D] -> [K, D]


def with_pooled(encoder, fmap: FeatureMap) -> FeatureMap:
    """``fmap`` plus its pooled embedding ``[E]`` (``FeatureMap.pooled``): the encoder's MAP head over its last-block
    tokens, which it must hold, in float32. What ``+pooled`` probes concatenate to every token."""
    from dense.features import check_featuremap_identity

    check_featuremap_identity(encoder.spec(), fmap, "the pooled embedding")
    if not fmap.has_layers((-1,), encoder.num_layers):
        raise InputError(f"a pooled embedding needs the last block among the layers, got {fmap.layers}")
    x = fmap.layer_tokens((-1,), encoder.num_layers).reshape(-1, encoder.hidden_size)  # [gh, gw, D] -> [N, D]
    return replace(fmap, pooled=pooled_fp32(encoder.vision.head, x))

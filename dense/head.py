"""The pieces of SigLIP's MAP pooling head, reused from transformers' module (no copy of its weights or code paths).

SigLIP has no CLS token: the image embedding is the head's output,
``y = out_proj(sum_n a_n v_n); e = y + mlp(layernorm(y))``, one learned probe query attending over the last block's
tokens ``x_n`` (after ``post_layernorm``) with ``v_n = W_v x_n + b_v``. ``head`` below is transformers'
``SiglipMultiheadAttentionPoolingHead`` (``probe``, ``attention`` = ``nn.MultiheadAttention``, ``layernorm``, ``mlp``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from dense.errors import InputError
from dense.features import FeatureMap


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
def pool_with_weights(head, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The head with its attention restricted by per-region patch weights: ``[K, E]`` (not normalized).

    ``tokens``: ``[gh, gw, D]`` last-block tokens. ``weights``: ``[K, gh, gw]`` in [0, 1] (0 = not attended).
    The K regions are K queries (all equal to the probe) of ONE ``nn.MultiheadAttention`` call over the same keys,
    with the additive mask ``log(weight)`` (``[K, N]``, broadcast over heads), then ``h + mlp(layernorm(h))`` as in
    transformers. A region of all-ones weights gives exactly the head's output on the whole image.
    """
    gh, gw, D = tokens.shape
    K = weights.shape[0]
    p = next(head.parameters())
    x = tokens.reshape(1, gh * gw, D).to(p.device, p.dtype)  # [gh, gw, D] -> [1, N, D]
    w = weights.reshape(K, gh * gw).to(p.device, torch.float32)  # [K, gh, gw] -> [K, N]
    if bool((w.max(dim=1).values <= 0).any()):
        raise InputError("every region needs at least one patch with a positive weight")
    mask = torch.log(w.clamp(min=0)).to(p.dtype)  # [K, N]: 0 inside, log(frac) on the border, -inf outside
    probe = head.probe.expand(1, K, D)  # [1, 1, D] -> [1, K, D]
    h = head.attention(probe, x, x, attn_mask=mask, need_weights=False)[0]  # [1, K, D]
    h = mlp_residual(head, h)
    return h[0].float().cpu()  # [1, K, D] -> [K, D]


def with_pooled(encoder, fmap: FeatureMap) -> FeatureMap:
    """``fmap`` plus its pooled embedding ``[E]`` (``FeatureMap.pooled``): the encoder's MAP head over its last-block
    tokens, which it must hold. What ``+pooled`` probes concatenate to every token."""
    from dense.features import check_featuremap_identity

    check_featuremap_identity(encoder.spec(), fmap, "the pooled embedding")
    if not fmap.has_layers((-1,), encoder.num_layers):
        raise InputError(f"a pooled embedding needs the last block among the layers, got {fmap.layers}")
    head = encoder.vision.head
    p = next(head.parameters())
    x = fmap.layer_tokens((-1,), encoder.num_layers).reshape(-1, encoder.hidden_size)  # [gh, gw, D] -> [N, D]
    with torch.inference_mode():
        emb = pooled(head, x.to(p.device, p.dtype)).float().cpu()  # [E]
    return replace(fmap, pooled=emb)

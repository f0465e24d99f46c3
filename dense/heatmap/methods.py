"""The heatmap methods: ways to turn last-block tokens into text-comparable patch vectors, and their registries.

Each method maps the tokens ``x [N, D]`` of the last block (and, for ``clear-*``, the block's input ``prev``) through
the MAP head's pieces (:class:`dense.head.HeadParts`) to one vector ``z_n`` per patch in the text embedding space.
Scoring (:mod:`dense.heatmap.scores`) hands them the pieces in float32 (:func:`dense.head.fp32_parts`).

``METHODS`` is the default registry: what ``--methods all``, the notebooks and a calibration choose among.
``EXPERIMENTAL_METHODS`` holds the methods that won nowhere in ``benchmarks/heatmap_methods.py`` (RESULTS.md,
"Heatmap methods") and that no paper's protocol needs (``attn-value``, ``leave-one-out`` and every ``+filter``); they
still run when named (:func:`get_method`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dense import head as maphead
from dense.errors import InputError
from dense.head import HeadParts


@dataclass(frozen=True)
class Method:
    """A way to turn last-block tokens into text-comparable patch vectors."""

    name: str
    fn: Callable  # (HeadParts, x_last [N, D], x_prev [N, D] | None) -> z [N, E] (not normalized)
    needs_prev: bool = False  # needs the input of the last block (the block before it)
    doc: str = ""
    filter: bool = False  # replace distractor tokens by their neighbours' mean first (dense.heatmap.distractors)
    follows: str = ""  # the paper whose protocol it implements ("" = none: a baseline or our own)
    experimental: bool = False  # in EXPERIMENTAL_METHODS, not in the default METHODS


def _raw(parts: HeadParts, x, prev):
    return x


def _map_value(parts: HeadParts, x, prev):
    return parts.head.attention.out_proj(maphead.value(parts.head, x))


def _map_value_mlp(parts: HeadParts, x, prev):
    return maphead.mlp_residual(parts.head, _map_value(parts, x, prev))


def _attn_value(parts: HeadParts, x, prev):
    head = parts.head
    N, D = x.shape
    a, v = maphead.attention_and_values(head, x)  # [H, N], [N, H, hd]
    c = (a.T[..., None] * v).reshape(N, D)  # [N, H, 1] * [N, H, hd] -> [N, H, hd] -> [N, D]
    out = head.attention.out_proj
    z = N * F.linear(c, out.weight) + out.bias  # [N, D]
    return maphead.mlp_residual(head, z)


def _leave_one_out(parts: HeadParts, x, prev):
    head = parts.head
    N, D = x.shape
    a, v = maphead.attention_and_values(head, x)  # [H, N], [N, H, hd]
    total = torch.einsum("hn,nhd->hd", a, v)  # [H, hd]: sum_n a_{h,n} v_{h,n}
    keep = (1 - a.T).clamp_min(1e-6)[..., None]  # [N, H, 1]: attention mass left when patch n is masked out
    y_minus = (total[None] - a.T[..., None] * v) / keep  # [N, H, hd]: renormalized attention without patch n
    e_minus = maphead.mlp_residual(head, head.attention.out_proj(y_minus.reshape(N, D)))  # [N, D] -> [N, E]
    e = maphead.pooled(head, x)  # [E]
    return e[None] - e_minus  # [N, E]; e + (N - 1)(e - e_minus) scored worse: low-attention patches looked like e


def clear_block(parts: HeadParts, prev: torch.Tensor) -> torch.Tensor:
    """Re-run the last block on its input ``prev [N, D]``: self-self attention, no residual, no MLP, then post-LN."""
    attn = parts.last_attn
    N, D = prev.shape
    H = attn.num_heads
    y = parts.last_norm(prev)
    q = attn.q_proj(y).reshape(N, H, D // H).transpose(0, 1)  # [N, D] -> [N, H, hd] -> [H, N, hd]
    k = attn.k_proj(y).reshape(N, H, D // H).transpose(0, 1)  # -> [H, N, hd]
    v = attn.v_proj(y).reshape(N, H, D // H).transpose(0, 1)  # -> [H, N, hd]
    s = attn.scale
    w = torch.softmax(q @ q.transpose(1, 2) * s, dim=-1) + torch.softmax(k @ k.transpose(1, 2) * s, dim=-1)  # [H, N, N]
    o = (w @ v).transpose(0, 1).reshape(N, D)  # [H, N, hd] -> [N, H, hd] -> [N, D]
    return parts.post_layernorm(attn.out_proj(o))


def _clear_map_value(parts: HeadParts, x, prev):
    return _map_value(parts, clear_block(parts, prev), None)


def _clear_map_value_mlp(parts: HeadParts, x, prev):
    return _map_value_mlp(parts, clear_block(parts, prev), None)


MASKCLIP = "MaskCLIP (Zhou et al. 2022): the pooling head's value path applied to every patch"
CLEAR = ("ClearCLIP (Lan et al. 2024: no residual, no FFN, self-self attention) with SCLIP's correlative attention "
         "q q^T + k k^T (Wang et al. 2024)")
REGISTERS = "Vision Transformers Need Registers (Darcet et al. 2024) and SC-CLIP's outlier tokens"

_BASE = (
    Method("raw", _raw, doc="last-layer tokens as they are (baseline)"),
    Method("map-value", _map_value, doc="value + output projection of the MAP head", follows=MASKCLIP),
    Method("map-value-mlp", _map_value_mlp, doc="map-value + the head's MLP residual",
           follows=MASKCLIP + ", then the SigLIP head's MLP"),
    Method("attn-value", _attn_value, doc="attention-weighted value contribution, + MLP residual"),
    Method("leave-one-out", _leave_one_out, doc="pooled embedding minus pooled-without-patch"),
    Method("clear-map-value", _clear_map_value, needs_prev=True,
           doc="last block with self-self attention, no residual/MLP, then map-value", follows=CLEAR),
    Method("clear-map-value-mlp", _clear_map_value_mlp, needs_prev=True,
           doc="last block with self-self attention, no residual/MLP, then map-value-mlp", follows=CLEAR),
)
_ALL = [*_BASE, *(replace(m, name=f"{m.name}+filter", filter=True,
                          doc=f"{m.doc}, distractor tokens replaced by their neighbours first",
                          follows=f"{m.follows}; {REGISTERS}" if m.follows else REGISTERS) for m in _BASE)]

# Measured by benchmarks/heatmap_methods.py (RESULTS.md, "Heatmap methods": open-vocabulary mIoU and pointing of both
# bundled models): none of these has the best figure of any column, and no paper's protocol needs them. The default
# registry keeps the winners (map-value-mlp: three columns; clear-map-value: one), the papers' methods (map-value:
# MaskCLIP; clear-map-value-mlp: ClearCLIP/SCLIP, shapes-tiny's calibrated method) and the raw-token baseline.
EXPERIMENTAL = frozenset({"attn-value", "leave-one-out", *(f"{m.name}+filter" for m in _BASE)})

_ALL = [replace(m, experimental=m.name in EXPERIMENTAL) for m in _ALL]
METHODS: dict[str, Method] = {m.name: m for m in _ALL if not m.experimental}
EXPERIMENTAL_METHODS: dict[str, Method] = {m.name: m for m in _ALL if m.experimental}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``, from ``METHODS`` or, named explicitly, ``EXPERIMENTAL_METHODS``
    (``ValueError`` listing the known ones otherwise)."""
    found = METHODS.get(name) or EXPERIMENTAL_METHODS.get(name)
    if found is None:
        extra = f"; experimental: {', '.join(EXPERIMENTAL_METHODS)}" if EXPERIMENTAL_METHODS else ""
        raise InputError(f"unknown heatmap method {name!r}; choose one of {', '.join(METHODS)}{extra}")
    return found


def method_of(encoder, method: str | None) -> str:
    """``method``, or the encoder's calibrated default when None."""
    return get_method(method if method is not None else encoder.calibration.method).name


def supported_methods(encoder, *, experimental: bool = False) -> list[str]:
    """The methods of ``METHODS`` (and ``EXPERIMENTAL_METHODS`` with ``experimental``) that work on this encoder's
    FeatureMaps: all but ``clear-*`` on a 1-block tower, whose input (the patch embedding) no FeatureMap holds; those
    still work from an image (:func:`dense.heatmap.with_aligned`)."""
    pool = {**METHODS, **EXPERIMENTAL_METHODS} if experimental else METHODS
    return [m for m, spec in pool.items() if not spec.needs_prev or encoder.num_layers >= 2]


def required_layers(method: str) -> tuple[int, ...]:
    """The ``layers=`` a FeatureMap must be extracted with for ``method`` (towers of 2 blocks or more)."""
    return (-2, -1) if get_method(method).needs_prev else (-1,)


def layers_for(encoder, methods: Sequence[str]) -> tuple[int, ...]:
    """One ``layers=`` that serves every method of ``methods`` that a FeatureMap of this encoder can serve."""
    need = {b for m in methods if m in supported_methods(encoder, experimental=True) for b in required_layers(m)}
    return tuple(sorted(need or {-1}))

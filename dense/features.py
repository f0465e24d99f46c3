"""``FeatureMap``: patch tokens that know their own geometry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dense._atomic import load_tensors, save_tensors
from dense.errors import InputError, MismatchError
from dense.preprocess import grid_to_pixel_xy, pixel_to_grid

FORMAT = "dense.FeatureMap"  # the header of a saved FeatureMap file (dense._atomic.save_tensors)
FORMAT_VERSION = 1  # the layout of a saved FeatureMap file

# The version of dense's own rules that shape features: the grid choice (dense.preprocess.choose_grid), the resize and
# normalisation (to_pixels), how tokens are read from the tower (position-embedding resizing, which blocks, after
# which norm) and the aligned-token maths (dense.heatmap.METHODS). It is part of every encoder spec, so of every
# feature-cache key and of every probe's and upsampler's identity: features made under other rules are never served
# or accepted. tests/test_rules_version.py pins reference outputs of each rule to this number; a rule that changes
# without a bump fails there.
RULES_VERSION = 2  # 2: annotated data is read in its annotation's geometry (dense.preprocess.read_hw)

# What must match between the encoder that made features and whatever reads them (heatmaps, segmentation, probes,
# upsamplers). The token budget (max_patches) and dtype may differ: they change the features' resolution and
# precision, not their meaning.
IDENTITY_KEYS = ("fingerprint", "family", "patch_size", "hidden_size", "num_layers", "rules")


def _identity_diff(want: dict, given: dict) -> dict:
    return {k: (want.get(k), given.get(k)) for k in IDENTITY_KEYS if want.get(k) != given.get(k)}


def featuremap_mismatch(spec: dict, fmap: FeatureMap) -> str | None:
    """Why ``fmap`` cannot be read as features of the encoder whose spec is ``spec`` (None when it can): the one
    check behind every consumer of a FeatureMap, run before any shortcut (stored aligned tokens included).

    A FeatureMap whose ``encoder`` spec holds none of :data:`IDENTITY_KEYS` (built by hand from tokens) makes no
    claim and is taken as is; one that holds any must match ``spec`` on all of them.
    """
    if not any(k in fmap.encoder_spec for k in IDENTITY_KEYS):
        return None
    diff = _identity_diff(spec, fmap.encoder_spec)
    if not diff:
        return None
    detail = ", ".join(f"{k}: {b!r}, not {a!r}" for k, (a, b) in diff.items())
    return f"the FeatureMap was made by another encoder or under other rules ({detail})"


def check_featuremap_identity(spec: dict, fmap: FeatureMap, what: str) -> None:
    """Raise :class:`MismatchError` (one line: ``what``, then why) when :func:`featuremap_mismatch` says
    ``fmap`` is not features of the encoder whose spec is ``spec``."""
    why = featuremap_mismatch(spec, fmap)
    if why:
        raise MismatchError(f"{what}: {why}; extract the image again with this encoder")


def identity_mismatch(trained: dict, given: dict, layers) -> str | None:
    """Why features of encoder spec ``given`` cannot feed a head trained on ``trained`` that reads blocks ``layers``
    (None when they can): the one check behind probes, upsamplers and referring heads."""
    diff = _identity_diff(trained, given)
    if diff:
        detail = ", ".join(f"{k}: trained on {a!r}, given {b!r}" for k, (a, b) in diff.items())
        return f"trained on another encoder ({detail})"
    missing = [b for b in layers if b not in given.get("layers", [])]
    if missing:
        return (f"reads blocks {list(layers)}; the features hold {given.get('layers')} (extract with --layers "
                f"including {missing})")
    return None


def spec_to_check(encoder=None, encoder_spec: dict | None = None, layers=(-1,)) -> dict | None:
    """The encoder spec a trained head is checked against when it is loaded: ``encoder_spec`` as given, or the spec
    of the :class:`~dense.encoder.Encoder` ``encoder`` for ``layers``; None when neither is given."""
    if isinstance(encoder, dict):
        raise TypeError("encoder= takes an Encoder; pass a spec dict as encoder_spec=")
    if encoder_spec is not None:
        return dict(encoder_spec)
    return None if encoder is None else encoder.spec(layers=tuple(layers))


def pca_rgb_shared(fmaps: Sequence[FeatureMap], *, sizes_hw: Sequence[tuple[int, int]] | None = None,
                   seed: int = 0) -> list[np.ndarray]:
    """The first three principal components of the tokens of all ``fmaps`` together, as colours: one basis and one
    stretch (each component between its 1st and 99th percentile over every token, as in DINOv2's figures), so a
    colour means the same in every image. uint8 ``[gh, gw, 3]`` per FeatureMap (or upsampled to ``sizes_hw[k]``).
    """
    from sklearn.decomposition import PCA

    flats = [f.tokens.reshape(f.grid_hw[0] * f.grid_hw[1], -1).float().numpy() for f in fmaps]  # [gh, gw, D] -> [N, D]
    dims = {x.shape[1] for x in flats}
    if len(dims) != 1:
        raise InputError(f"token widths differ ({sorted(dims)}): one PCA basis needs FeatureMaps of one encoder and "
                         f"the same layers")
    flat = np.concatenate(flats)  # [sum N, D]
    k = min(3, flat.shape[0], flat.shape[1])
    comps = PCA(n_components=k, random_state=seed).fit_transform(flat)  # [sum N, k]
    if k < 3:
        comps = np.concatenate([comps, np.zeros((comps.shape[0], 3 - k))], axis=1)
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0, 1)  # [sum N, 3]
    out = []
    start = 0
    for n, f in enumerate(fmaps):
        gh, gw = f.grid_hw
        one = rgb[start:start + gh * gw].reshape(gh, gw, 3)  # [N, 3] -> [gh, gw, 3]
        start += gh * gw
        if sizes_hw is not None:
            import cv2

            one = cv2.resize(one, (sizes_hw[n][1], sizes_hw[n][0]), interpolation=cv2.INTER_LINEAR)
        out.append((one * 255 + 0.5).astype(np.uint8))
    return out


def block_indices(layers, num_layers: int | None) -> tuple[int, ...]:
    """Python-style block indices (``-1`` = the last block) -> absolute ones in ``[0, num_layers)``.

    The one place layer indices are normalised. ``num_layers=None`` (depth unknown) leaves them as given; an index
    outside the depth raises ``ValueError``.
    """
    layers = tuple(int(b) for b in layers)
    if not num_layers:
        return layers
    bad = [b for b in layers if not -num_layers <= b < num_layers]
    if bad:
        raise InputError(f"layers {bad} out of range for {num_layers} blocks (Python indices, -1 = the last)")
    return tuple(b % num_layers for b in layers)


@dataclass(frozen=True, eq=False)
class FeatureMap:
    """Patch tokens of one image at its native aspect ratio.

    Attributes:
        tokens: ``[gh, gw, D]`` float tensor (CPU); ``D = hidden * len(layers)`` when several layers are concatenated.
        image_hw: original image ``(H, W)`` in pixels.
        resized_hw: ``(gh * patch_size, gw * patch_size)``, the pixels the encoder saw.
        patch_size: pixels per patch side.
        layers: which block outputs ``tokens`` holds: absolute block indices when the depth is known (``-1`` given at
            construction becomes ``num_layers - 1``); the last block is read after ``post_layernorm``, i.e.
            transformers' ``last_hidden_state``.
        encoder_spec: the spec of the encoder that made it (``Encoder.spec()``: fingerprint, token budget, dtype, ...),
            for caches and probes. (Saved under the header key ``"encoder"``.)
        aligned: optional text-comparable tokens ``[gh, gw, E]`` (see ``dense.heatmap``).
        pooled: optional pooled (MAP head) image embedding ``[E]`` of the last block, for probes that concatenate it
            to every token (the TIPS protocol of the SigLIP 2 paper's probe figures).
    """

    tokens: torch.Tensor
    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    patch_size: int
    layers: tuple[int, ...] = (-1,)
    encoder_spec: dict = field(default_factory=dict)
    aligned: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", block_indices(self.layers, self.num_layers))
        gh, gw = self.grid_hw
        if self.tokens.ndim != 3 or tuple(self.tokens.shape[:2]) != (gh, gw):
            raise InputError(f"tokens {tuple(self.tokens.shape)} do not match the grid {gh}x{gw} of {self.resized_hw}")
        if self.aligned is not None and tuple(self.aligned.shape[:2]) != (gh, gw):
            raise InputError(f"aligned tokens {tuple(self.aligned.shape)} do not match the grid {gh}x{gw}")
        if self.pooled is not None and self.pooled.ndim != 1:
            raise InputError(f"pooled embedding {tuple(self.pooled.shape)} must be one vector [E]")

    # --- geometry -------------------------------------------------------------------------------------------------
    @property
    def grid_hw(self) -> tuple[int, int]:
        """``(gh, gw)``: the patch grid."""
        return self.resized_hw[0] // self.patch_size, self.resized_hw[1] // self.patch_size

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    @property
    def num_layers(self) -> int | None:
        """The depth of the encoder that made it (None when unknown)."""
        return self.encoder_spec.get("num_layers")

    def has_layers(self, layers, num_layers: int | None = None) -> bool:
        """Does this FeatureMap hold every block of ``layers`` (Python indices allowed)?

        ``num_layers``: the encoder's depth, for a FeatureMap that does not record it (built by hand).
        """
        n = self.num_layers or num_layers
        return set(block_indices(layers, n)) <= set(block_indices(self.layers, n))

    def layer_tokens(self, layers, num_layers: int | None = None) -> torch.Tensor:
        """The tokens of ``layers`` only: ``[gh, gw, D * L_all]`` -> ``[gh, gw, D * len(layers)]``.

        ``layers``: block indices (``-1`` = the last block, resolved with :func:`block_indices` against the depth
        this FeatureMap records, or ``num_layers`` when it records none). A layer this FeatureMap does not hold raises
        ``ValueError`` saying how to extract it.
        """
        n = self.num_layers or num_layers
        have = list(block_indices(self.layers, n))
        want = list(block_indices(layers, n))
        if want == have:
            return self.tokens
        missing = [b for b in want if b not in have]
        if missing:
            raise InputError(f"this FeatureMap holds blocks {have}; blocks {missing} are missing: extract with "
                             f"layers={tuple(sorted(set(have) | set(want)))}")
        D = self.dim // len(have)
        chunks = [self.tokens[..., have.index(b) * D:(have.index(b) + 1) * D] for b in want]  # each [gh, gw, D]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-1)  # -> [gh, gw, D * len(layers)]

    def grid_to_pixel_xy(self, ij) -> np.ndarray:
        """Patch ``(i, j)`` (``(..., 2)``, fractional allowed) -> original-image ``(x, y)`` of its centre."""
        return grid_to_pixel_xy(ij, self.image_hw, self.resized_hw, self.patch_size)

    def pixel_to_grid(self, point_xy) -> np.ndarray:
        """Original-image ``(x, y)`` (``(..., 2)``) -> the patch ``(i, j)`` that covers it."""
        return pixel_to_grid(point_xy, self.image_hw, self.resized_hw, self.patch_size)

    # --- views ----------------------------------------------------------------------------------------------------
    def to_image(self, size_hw: tuple[int, int] | None = None, *, aligned: bool = False) -> torch.Tensor:
        """Bilinear upsample to the original ``(H, W)`` (or ``size_hw``): ``[D, H, W]``, channels first.

        The grid tiles the resized image exactly, so ``align_corners=False`` puts patch centres where
        :meth:`grid_to_pixel_xy` says they are.
        """
        x = self.aligned if aligned else self.tokens
        if x is None:
            raise InputError("this FeatureMap has no aligned tokens")
        size_hw = tuple(size_hw or self.image_hw)
        x = x.permute(2, 0, 1)[None].float()  # [gh, gw, D] -> [1, D, gh, gw]
        return F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)[0]  # -> [D, H, W]

    def pca_rgb(self, *, size_hw: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
        """First three principal components as colours: uint8 ``[gh, gw, 3]`` (or upsampled to ``size_hw``).

        Each component is stretched between its 1st and 99th percentile, as in DINOv2's figures. The basis is this
        image's own: :func:`pca_rgb_shared` colours several images in one basis, so their colours compare.
        """
        return pca_rgb_shared([self], sizes_hw=None if size_hw is None else [size_hw], seed=seed)[0]

    def to(self, dtype: torch.dtype) -> FeatureMap:
        """A copy with tokens (and aligned tokens) cast to ``dtype``; the pooled embedding keeps its own."""
        aligned = None if self.aligned is None else self.aligned.to(dtype)
        return FeatureMap(self.tokens.to(dtype), self.image_hw, self.resized_hw, self.patch_size, self.layers,
                          dict(self.encoder_spec), aligned, self.pooled)

    # --- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (tokens + JSON geometry in its metadata), atomically (temp + rename)."""
        tensors = {"tokens": self.tokens}
        if self.aligned is not None:
            tensors["aligned"] = self.aligned
        if self.pooled is not None:
            tensors["pooled"] = self.pooled
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "image_hw": list(self.image_hw),
            "resized_hw": list(self.resized_hw),
            "patch_size": self.patch_size,
            "layers": list(self.layers),
            "encoder": self.encoder_spec,
        }
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureMap:
        """Read a file written by :meth:`save`; a file that is not one raises ``ValueError`` naming it."""
        meta, tensors = load_tensors(path, FORMAT, FORMAT_VERSION, "FeatureMap")
        return cls(
            tokens=tensors["tokens"],
            image_hw=tuple(meta["image_hw"]),
            resized_hw=tuple(meta["resized_hw"]),
            patch_size=int(meta["patch_size"]),
            layers=tuple(meta["layers"]),
            encoder_spec=meta.get("encoder", {}),
            aligned=tensors.get("aligned"),
            pooled=tensors.get("pooled"),
        )

    def __repr__(self) -> str:
        gh, gw = self.grid_hw
        extra = "" if self.aligned is None else f", aligned={self.aligned.shape[-1]}"
        extra += "" if self.pooled is None else f", pooled={self.pooled.shape[0]}"
        return (f"FeatureMap(grid={gh}x{gw}, dim={self.dim}, image_hw={self.image_hw}, resized_hw={self.resized_hw}, "
                f"patch_size={self.patch_size}, layers={self.layers}{extra})")

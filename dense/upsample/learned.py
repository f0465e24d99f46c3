"""A learned joint upsampler in the JAFAR / AnyUp family, trained without labels from the encoder's own tokens.

Every output pixel is a softmax-weighted mix of the 3 x 3 patch tokens around it, the weights coming from image
features at the pixel (query) against image features pooled over each patch plus a projection of its token (keys),
plus a learned bias on the pixel's offset from each patch centre. Because the output is a convex mix of grid values,
the same weights upsample tokens, logits, probabilities or heatmaps, and a linear probe's logits of upsampled tokens
equal the upsampled logits: upsample the ``K`` logits, never the ``D`` tokens.

Geometry: a pixel's patch and its offset from the neighbouring patch centres come from
:func:`dense.preprocess.pixel_to_grid` and :func:`dense.preprocess.grid_to_pixel_xy`, nothing else.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dense._atomic import load_tensors, save_tensors
from dense.device import to_weights
from dense.errors import InputError, MismatchError
from dense.features import FeatureMap, block_indices, identity_mismatch, spec_to_check
from dense.preprocess import grid_to_pixel_xy, load_image, pixel_to_grid
from dense.upsample.guided import check_maps, image_guide

FORMAT = "dense.Upsampler"
VERSION = 1


# ---------------------------------------------------------------------------------------------------------------------
# Learned upsampler


@dataclass
class UpsamplerConfig:
    """Architecture and training settings of :class:`Upsampler` (saved with its weights)."""

    guide_dim: int = 24  # image-feature channels of the guide CNN (3 x 3 convs at image resolution)
    key_dim: int = 24  # query / key channels
    offset_hidden: int = 16  # hidden units of the MLP that scores a pixel's offset from a patch centre
    neighbourhood: int = 3  # (3, 5): patches per side that each pixel mixes
    target_scale: int = 2  # training target: the encoder's tokens on a grid this many times finer per side
    max_patches: int | None = None  # token budget of the low-resolution input (None: the encoder's default)
    epochs: int = 6
    lr: float = 3e-3
    images_per_step: int = 4  # gradient accumulation over images of different sizes
    seed: int = 0


def _neighbours(image_hw, resized_hw, patch_size, out_hw, n: int):
    """For every cell of an ``out_hw`` grid laid over the original image: its ``n x n`` surrounding patches.

    Returns ``index`` int64 ``[n*n, ho*wo]`` (flat patch index, clamped), ``valid`` bool ``[n*n, ho*wo]`` and
    ``offset`` float32 ``[n*n, ho*wo, 2]``: the cell centre minus the patch centre as (rows, columns) in patches.
    """
    H, W = image_hw
    ho, wo = out_hw
    gh, gw = resized_hw[0] // patch_size, resized_hw[1] // patch_size
    ys, xs = (np.arange(ho) + 0.5) * (H / ho), (np.arange(wo) + 0.5) * (W / wo)  # cell centres, original pixels
    xy = np.stack(np.meshgrid(xs, ys), axis=-1)  # [ho, wo, 2] as (x, y)
    ij = pixel_to_grid(xy, image_hw, resized_hw, patch_size).reshape(-1, 2)  # [ho*wo, 2] the covering patch
    origin = grid_to_pixel_xy((0.0, 0.0), image_hw, resized_hw, patch_size)
    pitch_xy = grid_to_pixel_xy((1.0, 1.0), image_hw, resized_hw, patch_size) - origin  # pixels per patch (x, y)
    r = n // 2
    d = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij"), -1).reshape(-1, 1, 2)
    nb = ij[None] + d  # [n*n, ho*wo, 2] neighbour (i, j)
    valid = (nb[..., 0] >= 0) & (nb[..., 0] < gh) & (nb[..., 1] >= 0) & (nb[..., 1] < gw)
    centre_xy = grid_to_pixel_xy(nb, image_hw, resized_hw, patch_size)  # [n*n, ho*wo, 2] (x, y)
    off_xy = (xy.reshape(1, -1, 2) - centre_xy) / pitch_xy  # [n*n, ho*wo, 2] in patches, (x, y)
    offset = off_xy[..., ::-1].copy()  # -> (rows, columns)
    index = np.clip(nb[..., 0], 0, gh - 1) * gw + np.clip(nb[..., 1], 0, gw - 1)  # [n*n, ho*wo]
    return (torch.from_numpy(index), torch.from_numpy(valid), torch.from_numpy(offset.astype(np.float32)))


def _resize_features(x: torch.Tensor, size_hw) -> torch.Tensor:
    """``[C, h, w]`` -> ``[C, *size_hw]``: area mean when shrinking, bilinear otherwise."""
    if tuple(x.shape[1:]) == tuple(size_hw):
        return x
    if size_hw[0] <= x.shape[1] and size_hw[1] <= x.shape[2]:
        return F.adaptive_avg_pool2d(x[None], size_hw)[0]
    return F.interpolate(x[None], size=size_hw, mode="bilinear", align_corners=False)[0]


class Upsampler(nn.Module):
    """Learned joint upsampler: patch-grid values ``[C, gh, gw]`` + image -> ``[C, H, W]`` (see the module docstring).

    For output cell ``x`` and each of the ``n x n`` patches ``j`` around it::

        w_xj = softmax_j( q(x) . k(j) / sqrt(key_dim) + mlp(offset_xj) - exp(s) |offset_xj|^2 )
        out(x) = sum_j w_xj value(j)

    ``q`` comes from image features at ``x``; ``k(j)`` from image features averaged over patch ``j`` plus a linear map
    of its (layer-normalised) token. The weights are convex, so any patch-grid map can be upsampled with them.
    """

    def __init__(self, in_dim: int, config: UpsamplerConfig | None = None, *, encoder_spec: dict | None = None,
                 layers: Sequence[int] | None = None, meta: dict | None = None):
        super().__init__()
        cfg = config or UpsamplerConfig()
        if cfg.neighbourhood not in (3, 5):
            raise InputError(f"neighbourhood must be 3 or 5, got {cfg.neighbourhood}")
        self.config = cfg
        self.in_dim = int(in_dim)
        self.encoder_spec = dict(encoder_spec or {})
        layers = list(layers) if layers is not None else list(self.encoder_spec.get("layers", [-1]))
        self.layers = list(block_indices(layers, self.encoder_spec.get("num_layers")))
        self.meta = dict(meta or {})
        g, k = cfg.guide_dim, cfg.key_dim
        self.guide = nn.Sequential(nn.Conv2d(3, g, 3, padding=1), nn.GELU(), nn.Conv2d(g, g, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(g, g, 3, padding=1))
        self.query = nn.Conv2d(g, k, 1)
        self.key_image = nn.Conv2d(g, k, 1)
        self.key_token = nn.Linear(self.in_dim, k)
        self.offset_mlp = nn.Sequential(nn.Linear(2, cfg.offset_hidden), nn.GELU(), nn.Linear(cfg.offset_hidden, 1))
        nn.init.zeros_(self.offset_mlp[2].weight)
        nn.init.zeros_(self.offset_mlp[2].bias)
        self.log_sharpness = nn.Parameter(torch.zeros(()))  # starts as a Gaussian of the distance: bilinear-like

    # --- identity -----------------------------------------------------------------------------------------------------
    def check(self, spec: dict) -> None:
        """Raise :class:`MismatchError` unless features of encoder ``spec`` can feed this upsampler."""
        why = identity_mismatch(self.encoder_spec, spec, self.layers)
        if why:
            raise MismatchError(f"upsampler {why}")

    # --- the mixing weights -------------------------------------------------------------------------------------------
    def weights(self, fmap: FeatureMap, image, size_hw: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixing weights ``[n*n, ho*wo]`` (sum 1 over the first axis) and patch indices ``[n*n, ho*wo]`` for an output
        of ``size_hw`` (default: the image's own size) covering the whole original image.

        ``image`` (path, PIL image or uint8 ``[h, w, 3]``) covers the same view as ``fmap`` (usually the original
        image; any size).
        """
        self.check(fmap.encoder_spec)
        guide = image_guide(image)  # [3, h, w]
        ho, wo = tuple(size_hw) if size_hw is not None else tuple(guide.shape[1:])
        gh, gw = fmap.grid_hw
        feats = self.guide(to_weights((guide - 0.5) / 0.25, self)[None])[0]  # [g, h, w], where the weights are
        q = self.query(_resize_features(feats, (ho, wo))[None])[0].reshape(-1, ho * wo)  # [k, ho*wo]
        tok = to_weights(fmap.layer_tokens(self.layers), self)  # [gh, gw, D]
        tok = F.layer_norm(tok, tok.shape[-1:])
        k_img = self.key_image(_resize_features(feats, (gh, gw))[None])[0]  # [k, gh, gw]
        keys = k_img.reshape(-1, gh * gw) + self.key_token(tok.reshape(gh * gw, -1)).T  # [k, gh*gw]
        index, valid, offset = _neighbours(fmap.image_hw, fmap.resized_hw, fmap.patch_size, (ho, wo),
                                           self.config.neighbourhood)
        index, valid, offset = index.to(keys.device), valid.to(keys.device), to_weights(offset, self)
        scale = 1.0 / math.sqrt(keys.shape[0])
        # one neighbour at a time: never a [k, n*n, ho*wo] tensor (a photo-sized output would need gigabytes)
        logits = torch.stack([(q * keys[:, index[d]]).sum(0) * scale for d in range(index.shape[0])])  # [n*n, ho*wo]
        logits = logits + self.offset_mlp(offset)[..., 0]  # [n*n, ho*wo, 2] -> [n*n, ho*wo]
        logits = logits - self.log_sharpness.exp() * (offset ** 2).sum(-1)
        logits = logits.masked_fill(~valid, float("-inf"))
        return logits.softmax(0), index

    @staticmethod
    def mix(values: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, size_hw: tuple[int, int]
            ) -> torch.Tensor:
        """``values [C, gh, gw]`` mixed with :meth:`weights` -> ``[C, ho, wo]``, where the weights are."""
        C = values.shape[0]
        flat = values.reshape(C, -1).to(weights.device, weights.dtype)  # [C, gh, gw] -> [C, gh*gw]
        out = sum(flat[:, index[d]] * weights[d] for d in range(index.shape[0]))  # [C, ho*wo]
        return out.reshape(C, *size_hw)  # [C, ho*wo] -> [C, ho, wo]

    def to_image(self, fmap: FeatureMap, image, values=None, *, size_hw: tuple[int, int] | None = None
                 ) -> torch.Tensor:
        """Patch-grid ``values [C, gh, gw]`` (default: the feature map's own tokens) -> ``[C, ho, wo]``, ``size_hw``
        defaulting to the image's size. ``image``: a path, PIL image or uint8 ``[H, W, 3]`` array.

        Upsample probe LOGITS (``[K, gh, gw]``) rather than tokens: the weights are convex, so a linear probe's
        logits of upsampled tokens equal the upsampled logits, at ``K / D`` of the cost and memory. Computed where the
        upsampler's weights are, in their dtype; the output is float32 on the CPU.
        """
        gh, gw = fmap.grid_hw
        if values is None:
            values = fmap.layer_tokens(self.layers).permute(2, 0, 1)  # [gh, gw, D] -> [D, gh, gw]
        values = check_maps(values, "values")
        if tuple(values.shape[1:]) != (gh, gw):
            raise InputError(f"values: expected [C, {gh}, {gw}] on the feature map's grid, got {tuple(values.shape)}")
        rgb = load_image(image)  # uint8 [H, W, 3]
        size_hw = tuple(size_hw) if size_hw is not None else tuple(rgb.shape[:2])
        with torch.inference_mode():
            w, index = self.weights(fmap, rgb, size_hw)
            return self.mix(values, w, index, size_hw).float().cpu()

    # --- persistence --------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file: weights + config + encoder spec + layers + meta; atomic (temp + rename)."""
        header = {"format": FORMAT, "version": VERSION, "in_dim": self.in_dim, "config": asdict(self.config),
                  "encoder": self.encoder_spec, "layers": self.layers, "meta": self.meta}
        return save_tensors(path, {k: v.detach() for k, v in self.state_dict().items()}, header)

    @classmethod
    def load(cls, path: str | os.PathLike, *, encoder=None, encoder_spec: dict | None = None) -> Upsampler:
        """Read a upsampler; given the ``encoder`` (an :class:`~dense.encoder.Encoder`) or the ``encoder_spec`` of the
        features it will read (``FeatureMap.encoder_spec``), one trained for another encoder raises
        :class:`MismatchError` naming the file."""
        spec = spec_to_check(encoder, encoder_spec)  # TypeError for a dict as encoder= before any file is read
        header, tensors = load_tensors(path, FORMAT, VERSION, "upsampler")
        up = cls(header["in_dim"], UpsamplerConfig(**header["config"]), encoder_spec=header["encoder"],
                 layers=header["layers"], meta=header.get("meta"))
        up.load_state_dict(tensors, strict=True)
        up.eval()
        if spec is not None:
            spec = spec_to_check(encoder, encoder_spec, up.layers)  # the layers it reads
            try:
                up.check(spec)
            except MismatchError as e:
                raise MismatchError(f"{path}: {e}") from None
        return up


def _pairs(encoder, images, cfg: UpsamplerConfig, layers) -> list[tuple[FeatureMap, np.ndarray, torch.Tensor]]:
    """(low-res FeatureMap, image uint8 [H, W, 3], target tokens [D, s*gh, s*gw]) per training image."""
    from dense.preprocess import to_pixels

    s = cfg.target_scale
    out = []
    for image in images:
        rgb, (gh, gw) = encoder.prepare(image, cfg.max_patches)
        lo = encoder.forward_pixels(to_pixels(rgb, (gh, gw), encoder.pixels)[None], layers)[0]  # [gh, gw, D]
        hi = encoder.forward_pixels(to_pixels(rgb, (s * gh, s * gw), encoder.pixels)[None], layers)[0]  # [sgh, sgw, D]
        fmap = encoder.feature_map(lo, rgb.shape[:2], (gh, gw), cfg.max_patches, layers)
        out.append((fmap, rgb, hi.permute(2, 0, 1).contiguous()))  # [s*gh, s*gw, D] -> [D, s*gh, s*gw]
    return out


def train_upsampler(encoder, images: Sequence, config: UpsamplerConfig | None = None, *,
                    layers: tuple[int, ...] = (-1,), progress: bool = True) -> Upsampler:
    """Train an :class:`Upsampler` without labels: from each image's tokens at the budget grid ``(gh, gw)`` and the
    image, predict the encoder's own tokens on the ``target_scale`` times finer grid (``(s*gh, s*gw)``, extracted
    from a larger resize). Loss: mean squared error of per-channel standardised tokens (what a probe's BatchNorm
    sees). ``images``: paths, PIL images or uint8 arrays. Deterministic for ``config.seed`` on CPU.
    """
    from dense._progress import tqdm

    cfg = config or UpsamplerConfig()
    images = list(images)
    if not images:
        raise InputError("train_upsampler: no images")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    pairs = _pairs(encoder, tqdm(images, desc="upsampler targets", unit="img", disable=not progress), cfg, layers)
    spec = pairs[0][0].encoder_spec
    up = Upsampler(pairs[0][0].dim, cfg, encoder_spec=spec, layers=list(layers),
                   meta={"images": len(images), "config": asdict(cfg)})
    allt = torch.cat([t.reshape(t.shape[0], -1) for _, _, t in pairs], 1)  # [D, sum of target cells]
    mu, sd = allt.mean(1, keepdim=True), allt.std(1, keepdim=True).clamp_min(1e-6)  # [D, 1]
    opt = torch.optim.AdamW(up.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_steps = cfg.epochs * math.ceil(len(pairs) / cfg.images_per_step)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=n_steps, pct_start=0.1)
    history = []
    bar = tqdm(range(cfg.epochs), desc="upsampler", unit="epoch", disable=not progress)
    up.train()
    for _ in bar:
        order = torch.randperm(len(pairs), generator=gen).tolist()
        total = 0.0
        for start in range(0, len(order), cfg.images_per_step):
            chunk = order[start:start + cfg.images_per_step]
            opt.zero_grad(set_to_none=True)
            for i in chunk:
                fmap, rgb, target = pairs[i]
                size_hw = tuple(target.shape[1:])
                w, index = up.weights(fmap, rgb, size_hw)  # [n*n, s*gh*s*gw]
                values = fmap.layer_tokens(up.layers).permute(2, 0, 1)  # [gh, gw, D] -> [D, gh, gw]
                pred = up.mix(values, w, index, size_hw)  # [D, s*gh, s*gw]
                loss = (((pred - target) / sd[:, :, None]) ** 2).mean()  # [D, 1] -> [D, 1, 1] per-channel scale
                (loss / len(chunk)).backward()
                total += loss.item()
            opt.step()
            sched.step()
        history.append(total / len(pairs))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    up.eval()
    # the loss of plain bilinear upsampling on the same targets, for reference in meta
    base = float(np.mean([(((F.interpolate(f.layer_tokens(up.layers).permute(2, 0, 1)[None], size=t.shape[1:],
                                           mode="bilinear", align_corners=False)[0] - t) / sd[:, :, None]) ** 2)
                           .mean().item() for f, _, t in pairs]))
    up.meta.update({"loss": history, "bilinear_loss": base, "seconds": time.perf_counter() - t0,
                    "token_mean_abs": float(mu.abs().mean())})
    return up

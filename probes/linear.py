"""``LinearProbe``: BatchNorm + 1x1 convolution over frozen patch tokens (the DINOv2 / mmsegmentation "BNHead").

A probe knows what it was trained on: its class names, the encoder spec of its features and which of the feature
map's layers it reads. Applying it to features of another encoder is an error (:class:`MismatchError`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dense._atomic import load_tensors, save_tensors
from dense.device import to_weights
from dense.errors import MismatchError
from dense.features import FeatureMap, block_indices, identity_mismatch, spec_to_check

FORMAT = "dense.LinearProbe"
VERSION = 1


class LinearProbe(nn.Module):
    """``logits = conv1x1(batchnorm(tokens))`` over ``[B, D, gh, gw]`` -> ``[B, K, gh, gw]``.

    Args:
        in_dim: channels the probe reads (``hidden_size * len(layers)``).
        class_names: one per output class (index = label value).
        encoder_spec: the ``FeatureMap.encoder_spec`` dict of the training features.
        layers: the block indices it reads; a subset (in order) of ``encoder_spec["layers"]``, whose tokens are
            concatenated in the feature map. None = all of them.
        pooled: the image's pooled embedding (``FeatureMap.pooled``) is concatenated to every token after them
            (the TIPS protocol).
    """

    def __init__(self, in_dim: int, class_names: list[str], *, encoder_spec: dict | None = None,
                 layers: list[int] | None = None, meta: dict | None = None, pooled: bool = False):
        super().__init__()
        self.class_names = list(class_names)
        self.encoder_spec = dict(encoder_spec or {})
        layers = list(layers) if layers is not None else list(self.encoder_spec.get("layers", [-1]))
        self.layers = list(block_indices(layers, self.encoder_spec.get("num_layers")))  # as FeatureMap.layers
        self.pooled = bool(pooled)
        self.meta = dict(meta or {})  # training config and validation figures, saved with the weights
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, len(self.class_names), kernel_size=1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, gh, gw]`` -> logits ``[B, K, gh, gw]``."""
        return self.conv(self.bn(x))

    # --- features -> input ------------------------------------------------------------------------------------------
    def check(self, spec: dict) -> None:
        """Raise :class:`MismatchError` unless features with encoder ``spec`` can feed this probe."""
        why = identity_mismatch(self.encoder_spec, spec, self.layers)
        if why:
            raise MismatchError(f"probe {why}")

    def select(self, fmap: FeatureMap) -> torch.Tensor:
        """The probe's input from a feature map: ``[gh, gw, D_all]`` -> ``[D, gh, gw]`` (its layers, concatenated;
        then the pooled embedding broadcast to every patch for a ``pooled`` probe)."""
        self.check(fmap.encoder_spec)
        x = select_layers(fmap, self.layers).permute(2, 0, 1)  # [gh, gw, D] -> [D, gh, gw]
        if not self.pooled:
            return x
        if fmap.pooled is None:
            raise MismatchError("this probe reads the pooled embedding, which the features lack (cache them "
                                     "with pooled=True)")
        gh, gw = fmap.grid_hw
        p = fmap.pooled.to(x.dtype)[:, None, None].expand(-1, gh, gw)  # [E] -> [E, gh, gw]
        return torch.cat([x, p])  # -> [D + E, gh, gw]

    @torch.inference_mode()
    def grid_logits(self, fmap: FeatureMap) -> torch.Tensor:
        """Logits on the patch grid: ``[K, gh, gw]``, float32 on the CPU (computed where the probe's weights are, in
        their dtype)."""
        x = to_weights(self.select(fmap)[None], self)  # [1, D, gh, gw]
        return self(x)[0].float().cpu()  # [1, K, gh, gw] -> [K, gh, gw]

    @torch.inference_mode()
    def logits(self, fmap: FeatureMap, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``[K, H, W]`` at the original image size (or ``size_hw``), upsampled bilinearly.

        The grid tiles the resized image exactly, so ``align_corners=False`` puts patch centres where
        ``FeatureMap.grid_to_pixel_xy`` says they are.
        """
        size_hw = tuple(size_hw or fmap.image_hw)
        return F.interpolate(self.grid_logits(fmap)[None], size=size_hw, mode="bilinear", align_corners=False)[0]

    @torch.inference_mode()
    def predict(self, fmap: FeatureMap, size_hw: tuple[int, int] | None = None, *, sharpen: str = "bilinear",
                image=None, upsampler=None, calibration=None) -> np.ndarray:
        """Label map: int32 numpy ``[H, W]`` at the original image size (or ``size_hw``), like every dense label map.

        ``sharpen="guided"`` sharpens the class probabilities with the image as guide, and ``upsampler`` (a trained
        :class:`dense.upsample.Upsampler` of the same encoder) replaces bilinear upsampling; both need ``image``
        (see :func:`dense.upsample.upsample_maps`, whose guided filter follows ``calibration``, usually
        ``encoder.calibration``; None: neutral defaults).
        """
        if sharpen == "bilinear" and upsampler is None:
            return self.logits(fmap, size_hw).argmax(0).to(torch.int32).cpu().numpy()
        from dense.upsample import upsample_maps

        grid = self.grid_logits(fmap)  # [K, gh, gw]
        if sharpen == "guided":
            grid = grid.softmax(0)  # probabilities: the guided filter keeps them a distribution
        up = upsample_maps(grid, fmap, sharpen=sharpen, image=image, upsampler=upsampler,
                           probabilities=sharpen == "guided", size_hw=size_hw, calibration=calibration)  # [K, H, W]
        return up.argmax(0).to(torch.int32).cpu().numpy()

    # --- persistence ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file: weights + class names + encoder spec + layers + meta; atomic (temp + rename)."""
        header = {"format": FORMAT, "version": VERSION, "in_dim": self.bn.num_features,
                  "class_names": self.class_names, "encoder": self.encoder_spec, "layers": self.layers,
                  "pooled": self.pooled, "meta": self.meta}
        return save_tensors(path, {k: v.detach() for k, v in self.state_dict().items()}, header)

    @classmethod
    def load(cls, path: str | os.PathLike, *, encoder=None, encoder_spec: dict | None = None) -> LinearProbe:
        """Read a probe; given the ``encoder`` (an :class:`~dense.encoder.Encoder`) or the ``encoder_spec`` of the
        features it will read (``FeatureMap.encoder_spec``), one trained for another encoder raises
        :class:`MismatchError` naming the file."""
        spec = spec_to_check(encoder, encoder_spec)  # TypeError for a dict as encoder= before any file is read
        header, tensors = load_tensors(path, FORMAT, VERSION, "probe")
        probe = cls(header["in_dim"], header["class_names"], encoder_spec=header["encoder"], layers=header["layers"],
                    meta=header.get("meta"), pooled=header.get("pooled", False))
        probe.load_state_dict(tensors, strict=True)
        probe.eval()
        if spec is not None:
            spec = spec_to_check(encoder, encoder_spec, probe.layers)  # the layers it reads
            try:
                probe.check(spec)
            except MismatchError as e:
                raise MismatchError(f"{path}: {e}") from None
        return probe


def select_layers(fmap: FeatureMap, layers: list[int] | tuple[int, ...]) -> torch.Tensor:
    """``[gh, gw, D * L_all]`` -> ``[gh, gw, D * len(layers)]``: the chunks of ``fmap.tokens`` for ``layers`` (block
    indices as stored in ``fmap.layers``; ``-1``-style indices are resolved against the encoder's depth)."""
    try:
        return fmap.layer_tokens(layers)
    except ValueError as e:
        raise MismatchError(str(e)) from None

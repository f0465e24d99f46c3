"""Training-free: a COLOUR guided filter (He, Sun & Tang, "Guided Image Filtering", TPAMI 2013, the 3 x 3 covariance
form) with the image as guide, applied to maps already brought to the image size.

Plain torch (running-sum box filters), no dependency: OpenCV's ``cv2.ximgproc.guidedFilter`` does the same but lives
in ``opencv-contrib-python-headless``, a larger package that must REPLACE ``opencv-python-headless`` (both install the
same ``cv2`` module). ``benchmarks/upsample.py`` times both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dense.errors import InputError
from dense.preprocess import image_tensor

# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def image_guide(image) -> torch.Tensor:
    """An image (path, PIL image, uint8 ``[H, W, 3]`` numpy or torch array) -> float32 ``[3, H, W]`` in [0, 1]."""
    return image_tensor(image).div(255.0)


def check_maps(x, name: str) -> torch.Tensor:
    """Float maps ``[C, h, w]`` (anything ``torch.as_tensor`` takes) -> float32, or ``ValueError`` naming ``name``."""
    x = torch.as_tensor(x)
    if x.ndim != 3 or not x.is_floating_point() or min(x.shape) == 0:
        raise InputError(f"{name}: expected a float tensor [C, h, w], got {x.dtype} {tuple(x.shape)}")
    return x.float()


# ---------------------------------------------------------------------------------------------------------------------
# Guided filter (He et al.), colour guide


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2r+1) x (2r+1)`` window clipped to the image (He et al.'s ``boxfilter / N``): ``[B, C, H, W]``.

    Running sums (``cumsum`` over the zero-padded map) along each axis, divided by the clipped window's pixel count:
    O(1) per pixel whatever the radius (separable ``avg_pool2d`` loops over the window), and equal to that window mean
    up to float32 rounding of the running sums.
    """
    r = int(radius)
    if r <= 0:
        return x
    H, W = x.shape[-2:]
    out = x
    for dim, n in ((2, H), (3, W)):
        c = F.pad(out, (0, 0, r + 1, r) if dim == 2 else (r + 1, r)).cumsum(dim)  # n -> n + 2r + 1 along dim
        out = c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)  # window sums, back to n along dim
    pos_h, pos_w = torch.arange(H), torch.arange(W)
    count_h = (pos_h + r + 1).clamp_max(H) - (pos_h - r).clamp_min(0)  # [H] pixels of the clipped window per row
    count_w = (pos_w + r + 1).clamp_max(W) - (pos_w - r).clamp_min(0)  # [W]
    return out / (count_h[:, None] * count_w[None]).to(x.dtype)  # [H, W] broadcast over [B, C]


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter with a colour guide: ``guide [3, H, W]``, ``src [C, H, W]`` -> ``[C, H, W]``.

    Per window: ``q = a^T I + b`` with ``a = (Sigma_I + eps U)^-1 cov(I, p)``, ``b = mean(p) - a^T mean(I)``; ``a`` and
    ``b`` are then averaged over the windows covering each pixel. ``eps`` is in the guide's units squared (guide in
    [0, 1]). All ``C`` channels share the guide statistics, so the 3 x 3 inverse is computed once per pixel.
    """
    ma, mb = _coefficients(guide, src, radius, eps)  # [3, C, H, W], [C, H, W]
    return (ma * guide.float()[:, None]).sum(0) + mb  # [C, H, W]


def _coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-averaged coefficients of :func:`guided_filter`: ``mean_a [3, C, H, W]``, ``mean_b [C, H, W]``."""
    if guide.ndim != 3 or guide.shape[0] != 3:
        raise InputError(f"guide: expected [3, H, W], got {tuple(guide.shape)}")
    if src.ndim != 3 or src.shape[1:] != guide.shape[1:]:
        raise InputError(f"src: expected [C, H, W] with (H, W) = {tuple(guide.shape[1:])}, got {tuple(src.shape)}")
    if radius < 1 or not eps > 0:
        raise InputError(f"radius must be >= 1 and eps > 0, got radius={radius}, eps={eps}")
    C, H, W = src.shape
    I, p = guide.float(), src.float()
    ii = torch.stack([I[0] * I[0], I[0] * I[1], I[0] * I[2], I[1] * I[1], I[1] * I[2], I[2] * I[2]])  # [6, H, W]
    Ip = (I[:, None] * p[None]).reshape(3 * C, H, W)  # [3, C, H, W] -> [3C, H, W]
    stats = box_filter(torch.cat([I, ii, p, Ip])[None], radius)[0]  # [3 + 6 + C + 3C, H, W]
    mI, mII, mp, mIp = stats[:3], stats[3:9], stats[9:9 + C], stats[9 + C:].reshape(3, C, H, W)
    # Sigma + eps U, symmetric: entries (rr, rg, rb, gg, gb, bb)
    s_rr = mII[0] - mI[0] * mI[0] + eps
    s_rg = mII[1] - mI[0] * mI[1]
    s_rb = mII[2] - mI[0] * mI[2]
    s_gg = mII[3] - mI[1] * mI[1] + eps
    s_gb = mII[4] - mI[1] * mI[2]
    s_bb = mII[5] - mI[2] * mI[2] + eps
    # inverse through the adjugate (symmetric, so the cofactor matrix is its own transpose): elementwise over H*W,
    # no batched torch.linalg.solve of H*W tiny systems
    i_rr = s_gg * s_bb - s_gb * s_gb
    i_rg = s_gb * s_rb - s_rg * s_bb
    i_rb = s_rg * s_gb - s_gg * s_rb
    i_gg = s_rr * s_bb - s_rb * s_rb
    i_gb = s_rb * s_rg - s_rr * s_gb
    i_bb = s_rr * s_gg - s_rg * s_rg
    det = s_rr * i_rr + s_rg * i_rg + s_rb * i_rb  # > 0: Sigma is PSD and eps > 0
    inv = torch.stack([torch.stack([i_rr, i_rg, i_rb]), torch.stack([i_rg, i_gg, i_gb]),
                       torch.stack([i_rb, i_gb, i_bb])]) / det  # [3, 3, H, W]
    cov = mIp - mI[:, None] * mp[None]  # [3, C, H, W]
    a = torch.einsum("ijhw,jchw->ichw", inv, cov)  # [3, C, H, W]
    b = mp - (a * mI[:, None]).sum(0)  # [C, H, W]
    ab = box_filter(torch.cat([a.reshape(3 * C, H, W), b])[None], radius)[0]  # [4C, H, W]
    return ab[:3 * C].reshape(3, C, H, W), ab[3 * C:]  # [3C, H, W] -> [3, C, H, W]; [C, H, W]


def guided_upsample(x, image, *, radius: int = 8, eps: float = 1e-4, renormalize: bool = True,
                    subsample: int = 1) -> torch.Tensor:
    """Upsample maps ``x`` (``[C, gh, gw]`` on the patch grid, or already ``[C, H, W]``) to the image with the image
    (a path, PIL image or uint8 ``[H, W, 3]``) as guide: ``-> [C, H, W]`` float32.

    ``x`` is first resized bilinearly (``align_corners=False``: patch centres land where ``FeatureMap.grid_to_pixel_xy``
    says) to ``(H, W)``, then colour-guided-filtered (:func:`guided_filter`; ``radius`` in image pixels, ``eps`` on the
    [0, 1] colour scale). ``renormalize=True`` treats ``x`` as probabilities over ``C``: negative values are clipped
    and each pixel is divided by its sum (the filter keeps sums only up to rounding and can undershoot 0). Use
    ``renormalize=False`` for heatmaps and logits. ``subsample > 1`` is He's "fast guided filter": the coefficients are
    computed on the guide and maps downsampled by that factor (radius too) and upsampled bilinearly; ~``subsample**2``
    times cheaper and nearly as sharp, since the input maps are smooth at that scale anyway.
    """
    I = image_guide(image)  # [3, H, W]
    H, W = I.shape[1:]
    x = check_maps(x, "x")
    if tuple(x.shape[1:]) != (H, W):
        x = F.interpolate(x[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # [C, h, w] -> [C, H, W]
    s = int(subsample)
    if s < 1:
        raise InputError(f"subsample must be >= 1, got {subsample}")
    if s == 1:
        q = guided_filter(I, x, radius, eps)
    else:  # fast guided filter: coefficients at low resolution, applied with the full-resolution guide
        hs, ws = max(1, round(H / s)), max(1, round(W / s))
        I_lo = F.interpolate(I[None], size=(hs, ws), mode="area")[0]  # [3, hs, ws]
        x_lo = F.interpolate(x[None], size=(hs, ws), mode="area")[0]  # [C, hs, ws]
        q = _fast_guided(I_lo, x_lo, max(1, round(radius / s)), eps, I)
    if renormalize:
        q = q.clamp_min(0)
        q = q / q.sum(0, keepdim=True).clamp_min(1e-8)
    return q


def _fast_guided(I_lo, p_lo, radius, eps, I_full) -> torch.Tensor:
    """He & Sun's fast guided filter: coefficients at low resolution, upsampled bilinearly, applied to the guide."""
    C = p_lo.shape[0]
    H, W = I_full.shape[1:]
    ma, mb = _coefficients(I_lo, p_lo, radius, eps)  # [3, C, hs, ws], [C, hs, ws]
    ab = torch.cat([ma.reshape(3 * C, *ma.shape[2:]), mb])[None]  # [1, 4C, hs, ws]
    ab = F.interpolate(ab, size=(H, W), mode="bilinear", align_corners=False)[0]  # -> [4C, H, W]
    ma, mb = ab[:3 * C].reshape(3, C, H, W), ab[3 * C:]  # [3, C, H, W], [C, H, W]
    return (ma * I_full[:, None]).sum(0) + mb  # [C, H, W]

"""Distractor tokens: ViT "register"-like tokens found by robust outlier cues and replaced by their neighbours' mean
(the ``+filter`` heatmap methods; the cues are the checkpoint's ``Calibration.distractor_cues``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dense.errors import InputError


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
        raise InputError(f"unknown distractor cues {sorted(unknown)}; choose from {DISTRACTOR_CUES}")
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

"""A light trainable referring head on frozen dense tokens: expression -> patch heatmap + box.

The training-free path (``dense.refer``) reads the checkpoint's MAP head as it is. This head is the small trained
alternative the SigLIP 2 paper points at (it trains a 6-layer decoder on frozen So400m tokens); ours is deliberately
tiny so it trains on CPU in a minute on the synthetic world:

    x_n = Linear(LayerNorm(token_n)) + Fourier(pos_n)          pos_n: patch centre / (W, H), in [0, 1]^2
    h_n = x_n + MLP(x_n * (1 + gamma(t)) + beta(t))            FiLM by the text embedding t
    l_n = w . h_n                                              patch logits -> the heatmap
    a = softmax(l), c = sum_n a_n pos_n                        where the head looks
    box = (c + 0.5 tanh(d_xy), sigmoid(d_wh)),  d = MLP(sum_n a_n h_n)      normalized (cx, cy, w, h)

Loss: binary cross-entropy of ``l`` against the fraction of each patch's cell inside the target box
(:func:`dense.refer.box_patch_weights`) + L1 + generalized IoU on the box. Tokens are the FeatureMap's (frozen, any
layers), text embeddings come from :func:`dense.text.embed_texts`. Positions go through
:func:`dense.preprocess.grid_to_pixel_xy`, so native aspect ratios and any grid size work.

    dense probe refer --model M --ann A --refs R --images I [--steps 1500] [--save head.safetensors]

trains on the ``train`` refs, reports Acc@0.5 / pointing on ``val`` (and ``test`` with ``--test``) through
:func:`dense.eval.refer.evaluate_refer_head`, and saves the head with the encoder spec it was trained on. Like a
linear probe, the head reads only features of that encoder (:func:`dense.features.identity_mismatch`: the same
checkpoint and rules; another dtype or token budget is fine) and is saved as one ``.safetensors`` file
(:func:`dense._atomic.save_tensors`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense._atomic import load_tensors, save_tensors
from dense.device import to_weights
from dense.errors import InputError, MismatchError
from dense.features import FeatureMap, block_indices, identity_mismatch
from dense.refer import box_patch_weights, peak_in_box

FORMAT = "dense.ReferHead"
VERSION = 1

log = logging.getLogger("dense")


def patch_positions(fmap: FeatureMap) -> torch.Tensor:
    """Patch centres as fractions of the original image, ``[gh, gw, 2]`` as (x / W, y / H)."""
    gh, gw = fmap.grid_hw
    ii, jj = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    xy = fmap.grid_to_pixel_xy(np.stack([ii, jj], axis=-1))  # [gh, gw, 2] pixels
    H, W = fmap.image_hw
    return torch.from_numpy(xy / np.array([W, H])).float()


class ReferHead(nn.Module):
    """See the module docstring. ``forward`` takes padded batches; ``predict`` one FeatureMap and one text vector.

    ``encoder_spec``: the ``FeatureMap.encoder_spec`` dict of the training features; ``layers``: the blocks it reads
    (default: all of the spec's), concatenated as in the FeatureMap.
    """

    def __init__(self, token_dim: int, text_dim: int, *, hidden: int = 128, n_freq: int = 8,
                 encoder_spec: dict | None = None, layers: Sequence[int] | None = None):
        super().__init__()
        self.config = {"token_dim": token_dim, "text_dim": text_dim, "hidden": hidden, "n_freq": n_freq}
        self.encoder_spec = dict(encoder_spec or {})
        layers = list(layers) if layers is not None else list(self.encoder_spec.get("layers", [-1]))
        self.layers = list(block_indices(layers, self.encoder_spec.get("num_layers")))  # as FeatureMap.layers
        self.tok = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, hidden))
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32), persistent=False)
        self.pos = nn.Linear(4 * n_freq, hidden)
        self.film = nn.Linear(text_dim, 2 * hidden)
        self.mix = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.logit = nn.Linear(hidden, 1)
        self.box = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 4))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, text: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens ``[B, N, Dt]``, pos ``[B, N, 2]``, text ``[B, E]``, valid bool ``[B, N]`` (False = padding)
        -> patch logits ``[B, N]`` (padding at -inf), box ``[B, 4]`` normalized (cx, cy, w, h)."""
        ang = pos[..., None] * self.freqs  # [B, N, 2, F]
        four = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(2)  # [B, N, 2, 2F] -> [B, N, 4F]
        x = self.tok(tokens) + self.pos(four)  # [B, N, H]
        gamma, beta = self.film(text)[:, None].chunk(2, dim=-1)  # [B, 1, 2H] -> 2 x [B, 1, H]
        h = x + self.mix(x * (1 + gamma) + beta)  # [B, N, H]
        logits = self.logit(h)[..., 0].masked_fill(~valid, float("-inf"))  # [B, N]
        a = logits.softmax(dim=-1)  # [B, N]
        centre = torch.einsum("bn,bnc->bc", a, pos)  # [B, 2]
        d = self.box(torch.einsum("bn,bnh->bh", a, h))  # [B, 4]
        return logits, torch.cat([centre + 0.5 * torch.tanh(d[:, :2]), torch.sigmoid(d[:, 2:])], dim=-1)

    def check(self, spec: dict) -> None:
        """Raise :class:`probes.linear.MismatchError` unless features of encoder ``spec`` can feed this head."""
        why = identity_mismatch(self.encoder_spec, spec, self.layers)
        if why:
            raise MismatchError(f"referring head {why}")

    def select(self, fmap: FeatureMap) -> torch.Tensor:
        """The head's tokens of ``fmap`` (identity checked first): ``[gh, gw, token_dim]``."""
        self.check(fmap.encoder_spec)
        try:
            return fmap.layer_tokens(self.layers)
        except ValueError as e:
            raise MismatchError(str(e)) from None

    @torch.inference_mode()
    def predict(self, fmap: FeatureMap, text_emb: torch.Tensor) -> dict:
        """One image, T expressions (``text_emb [T, E]`` or ``[E]``) -> ``{"box_xyxy": [T, 4], "point_xy": [T, 2],
        "heatmap": [T, gh, gw]}`` in original-image pixels (the point: the refined peak of the patch logits inside the
        regressed box, :func:`dense.refer.peak_in_box`, so it lies in its box). Computed where the head's weights are,
        in their dtype; the outputs are float32 / numpy on the CPU."""
        text = to_weights(text_emb.reshape(-1, text_emb.shape[-1]), self)  # [T, E]
        T = text.shape[0]
        gh, gw = fmap.grid_hw
        tokens = to_weights(self.select(fmap).reshape(1, gh * gw, -1), self)  # [gh, gw, D] -> [1, N, D]
        pos = to_weights(patch_positions(fmap).reshape(1, gh * gw, 2), self)  # [gh, gw, 2] -> [1, N, 2]
        tokens, pos = tokens.expand(T, -1, -1), pos.expand(T, -1, -1)  # -> [T, N, D], [T, N, 2]
        valid = torch.ones(T, gh * gw, dtype=torch.bool, device=text.device)
        logits, box = (t.float().cpu() for t in self(tokens, pos, text, valid))  # [T, N], [T, 4]
        heat = logits.sigmoid().reshape(T, gh, gw)  # [T, N] -> [T, gh, gw]
        H, W = fmap.image_hw
        size = torch.tensor([W, H, W, H], dtype=torch.float32)
        box_xyxy = (torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], dim=-1) * size).numpy()
        box_xyxy = np.clip(box_xyxy, 0, size.numpy())
        point_xy = np.stack([peak_in_box(h, fmap, b)[1] for h, b in zip(heat, box_xyxy, strict=True)])  # [T, 2]
        return {"box_xyxy": box_xyxy.astype(np.float64), "point_xy": point_xy, "heatmap": heat}

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file: weights + config + encoder spec + layers; atomic (temp + rename)."""
        header = {"format": FORMAT, "version": VERSION, "config": self.config, "encoder": self.encoder_spec,
                  "layers": self.layers}
        return save_tensors(path, {k: v.detach() for k, v in self.state_dict().items()}, header)

    @classmethod
    def load(cls, path: str | os.PathLike, *, encoder=None) -> ReferHead:
        """Read a head; with ``encoder`` (an ``Encoder`` or a spec dict) one trained on another encoder raises
        :class:`probes.linear.MismatchError` naming the file."""
        header, tensors = load_tensors(path, FORMAT, VERSION, "referring head")
        head = cls(**header["config"], encoder_spec=header["encoder"], layers=header["layers"])
        head.load_state_dict(tensors, strict=True)
        head.eval()
        if encoder is not None:
            spec = encoder if isinstance(encoder, dict) else encoder.spec(layers=tuple(head.layers))
            try:
                head.check(spec)
            except MismatchError as e:
                raise MismatchError(f"{path}: {e}") from None
        return head


# ---------------------------------------------------------------------------------------------------------------------
# Training on (FeatureMap, text embedding, target box) samples


@dataclass
class ReferSample:
    """One expression on one image: ``fmap`` is shared between the expressions of an image."""

    fmap: FeatureMap
    text: torch.Tensor  # [E]
    box_xyxy: np.ndarray  # [4] original-image pixels


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], dim=-1)


def giou_loss(pred_xyxy: torch.Tensor, gt_xyxy: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - GIoU`` of paired boxes ``[B, 4]``."""
    lt, rb = torch.maximum(pred_xyxy[:, :2], gt_xyxy[:, :2]), torch.minimum(pred_xyxy[:, 2:], gt_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_p = (pred_xyxy[:, 2:] - pred_xyxy[:, :2]).clamp(min=0).prod(dim=-1)
    area_g = (gt_xyxy[:, 2:] - gt_xyxy[:, :2]).clamp(min=0).prod(dim=-1)
    union = area_p + area_g - inter
    hull = (torch.maximum(pred_xyxy[:, 2:], gt_xyxy[:, 2:]) - torch.minimum(pred_xyxy[:, :2], gt_xyxy[:, :2]))
    hull = hull.clamp(min=0).prod(dim=-1)
    giou = inter / union.clamp(min=1e-9) - (hull - union) / hull.clamp(min=1e-9)
    return (1 - giou).mean()


def _prepare(s: ReferSample, head: ReferHead) -> dict[str, torch.Tensor]:
    """One sample's flat tensors (computed once per training run), its identity checked against the head's."""
    gh, gw = s.fmap.grid_hw
    N = gh * gw
    H, W = s.fmap.image_hw
    return {"tokens": head.select(s.fmap).reshape(N, -1).float(),  # [gh, gw, D] -> [N, D]
            "pos": patch_positions(s.fmap).reshape(N, 2),  # [gh, gw, 2] -> [N, 2]
            "target": box_patch_weights(s.fmap, s.box_xyxy[None])[0].reshape(N),  # [gh, gw] -> [N]
            "text": s.text.float(), "box": torch.from_numpy(s.box_xyxy / np.array([W, H, W, H])).float()}


def _collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad prepared samples to the largest grid: tokens ``[B, N, D]``, pos ``[B, N, 2]``, valid/target ``[B, N]``."""
    n = max(it["tokens"].shape[0] for it in items)
    B, D = len(items), items[0]["tokens"].shape[1]
    out = {"tokens": torch.zeros(B, n, D), "pos": torch.zeros(B, n, 2), "valid": torch.zeros(B, n, dtype=torch.bool),
           "target": torch.zeros(B, n), "text": torch.stack([it["text"] for it in items]),
           "box": torch.stack([it["box"] for it in items])}
    for b, it in enumerate(items):
        N = it["tokens"].shape[0]
        out["tokens"][b, :N], out["pos"][b, :N], out["target"][b, :N] = it["tokens"], it["pos"], it["target"]
        out["valid"][b, :N] = True
    return out


def train_refer_head(samples: Sequence[ReferSample], *, steps: int = 1500, batch_size: int = 64, lr: float = 2e-3,
                     hidden: int = 128, seed: int = 0, log_every: int = 0, progress: bool = False) -> ReferHead:
    """Adam with cosine decay over ``steps`` batches drawn with replacement. Seeded; deterministic on CPU.
    ``progress``: a bar over the steps, with the loss."""
    from dense._progress import tqdm

    if not samples:
        raise InputError("no training samples")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = samples[0].fmap
    head = ReferHead(first.dim, samples[0].text.shape[-1], hidden=hidden, encoder_spec=first.encoder_spec,
                     layers=first.layers)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    prepared = [_prepare(s, head) for s in samples]
    head.train()
    bar = tqdm(range(steps), desc="refer head", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(len(samples), (min(batch_size, len(samples)),), generator=g).tolist()
        batch = _collate([prepared[i] for i in idx])
        logits, box = head(batch["tokens"], batch["pos"], batch["text"], batch["valid"])
        valid = batch["valid"]
        bce = F.binary_cross_entropy_with_logits(logits[valid], batch["target"][valid])
        pred_xyxy = _cxcywh_to_xyxy(box)
        loss = bce + F.l1_loss(pred_xyxy, batch["box"]) * 5 + giou_loss(pred_xyxy, batch["box"]) * 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % 50 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("refer head step %5d  loss %.4f  bce %.4f", step, loss.item(), bce.item())
    return head.eval()


def dataset_samples(encoder, ann, refs, images, *, split: str, templates=None, max_patches: int | None = None,
                    limit: int | None = None, progress: bool = False) -> tuple[list[ReferSample], list[np.ndarray]]:
    """Extract each image of ``split`` once and pair every sentence with its target box; also the targets' masks.
    ``progress``: a bar over the extraction."""
    from dense import coco
    from dense.heatmap import templates_of
    from dense.text import embed_texts

    ds = coco.load_coco(ann, images)
    by_image: dict[int, list] = {}
    for r in coco.load_refs(refs, ds, split=split):
        by_image.setdefault(r.image_id, []).append(r)
    ids = sorted(by_image)[:limit] if limit is not None else sorted(by_image)
    samples, masks = [], []
    for iid, fmap in zip(ids, encoder.extract_many([ds.image_path(i) for i in ids], max_patches=max_patches,
                                                   progress=progress), strict=True):
        for ref in by_image[iid]:
            box, mask = ds.box_xyxy(ref.ann_id), ds.mask(ref.ann_id)
            text = embed_texts(encoder, ref.sentences, templates=templates_of(encoder, templates))  # [S, E]
            for t in text:
                samples.append(ReferSample(fmap, t, box))
                masks.append(mask)
    return samples, masks

"""Train linear probes on cached features: a one-pass sweep (DINOv2 ``eval/linear.py`` style), best head on val.

Every head of the sweep (one per learning rate x layer set) sees the same feature batches in the same order; each has
its own AdamW parameter group, so the heads are independent and the sweep costs one pass over the features.

Choices, and why:

- **Native aspect ratio, no padding.** Images are batched with others of the same patch grid (``gh, gw``); a batch
  never mixes grids, so nothing is padded or resized to a square.
- **BatchNorm statistics are the training set's exact mean and variance**, computed once before training and frozen
  (the BN affine weights still train). The features are frozen, so batch statistics would only add noise, make the
  result depend on the batch composition, and cost a pass over every batch. The saved module is a plain
  ``BatchNorm2d`` + ``Conv2d`` in eval mode.
- **One matmul per batch for all heads.** With BN frozen, head h is ``x @ A_h.T + c_h`` with
  ``A_h = (gamma_h * W_h) / sd`` and ``c_h = W_h @ beta_h + b_h - A_h @ mu``; the stacked ``A`` of all heads
  multiplies the tokens once, and autograd reaches ``gamma, beta, W, b`` through ``A`` and ``c``.
- **Training targets are pixel counts per cell.** The label map is cut into ``(gh * s, gw * s)`` cells
  (``s = label_scale``); each cell's target is how many of its original pixels carry each class (ignored pixels count
  for nothing). The loss ``-sum(count_k * log p_k) / valid pixels`` is EXACTLY the pixel-level cross-entropy at the
  original resolution when the logits are held constant over each cell, at the cost of ``gh * s * gw * s`` cells
  instead of ``H * W`` pixels. ``s = 1`` (default) trains on the patch grid itself; ``s > 1`` upsamples the logits
  bilinearly to the cells, closer to full-resolution training but ``s**2`` times the loss cost (measured in
  ``benchmarks/probe_train.py``). Validation and test are always scored at the original image resolution
  (:mod:`probes.score`).
- **Streaming.** Samples from :func:`load_samples` (``stream=True``, the default) are
  :class:`probes.stream.CachedSample`: tokens are read from the cache batch by batch (one batch ahead, on a
  thread), targets are computed from the label map when its batch comes, and the BN statistics pass streams too;
  peak memory does not grow with the dataset.
  In-memory :class:`Sample` lists train through the same loop (same batches, same arithmetic: the same probe).
- **Protocols** (heads of one sweep, keyed by learning rate, layer set and ``+pooled``): the last block (default),
  the last k blocks concatenated (DINOv2; a layer set of k blocks), the best single block chosen on val (PE; one
  layer set per block, see :mod:`probes.protocols`), and ``+pooled`` (TIPS, the SigLIP 2 paper's probe figures: the
  image's pooled MAP embedding concatenated to every token; cached with ``FeatureCache.for_encoder(...,
  pooled=True)``). Heads of a layer set share one matmul over its columns only; the pooled part of a head is a
  per-image constant, so it costs one ``[K, E] @ [E]`` product per image.
- Seeded (``torch.Generator``) initialisation and batch order: the same inputs and seed give the same probe on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dense._progress import tqdm
from dense.errors import InputError, MismatchError
from dense.features import IDENTITY_KEYS, FeatureMap, block_indices
from dense.labels import IGNORE
from probes.linear import LinearProbe
from probes.score import score_probes


@dataclass(frozen=True)
class Sample:
    """One image: its cached features and its label map (signed int ``[H, W]``, IGNORE = -1) at original resolution."""

    key: str
    fmap: FeatureMap
    label: np.ndarray

    # the interface the trainer reads (shared with probes.stream.CachedSample)
    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.fmap.grid_hw

    @property
    def encoder_spec(self) -> dict:
        return self.fmap.encoder_spec

    @property
    def pooled_dim(self) -> int | None:
        return None if self.fmap.pooled is None else self.fmap.pooled.shape[0]

    def read(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.fmap.tokens, self.fmap.pooled


LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # the default learning-rate grid, written once


@dataclass
class ProbeConfig:
    """Training settings; each (lr, layer set) pair is one head of the sweep."""

    lrs: tuple[float, ...] = LRS
    layer_sets: tuple[tuple[int, ...], ...] | None = None  # block indices per head; None: all layers of the features
    epochs: int = 10
    batch_size: int = 16  # images per step (all of one grid)
    label_scale: int = 1  # training cells per patch side (see the module docstring); val/test at original size
    weight_decay: float = 0.0
    seed: int = 0
    feature_dtype: str = "float32"  # ('float32', 'bfloat16'): how in-memory Sample tokens are held (streamed
    # samples are read in the cache's own dtype)
    pooled: tuple[bool, ...] = (False,)  # ((False,), (True,), (False, True)): heads without / with the pooled
    # embedding concatenated to every token (TIPS); True needs features cached with pooled=True


@dataclass
class SweepResult:
    """``best``: the head with the highest val mIoU (ties: the first in sweep order); ``val``: figures per head key;
    ``history``: mean training loss per epoch per head key."""

    best: LinearProbe
    best_key: str
    val: dict[str, dict[str, float]]
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    probes: dict[str, LinearProbe] = field(default_factory=dict)
    heads: dict[str, Head] = field(default_factory=dict)  # head key -> its settings

    @property
    def lr_at_grid_edge(self) -> str | None:
        """``"lowest"`` / ``"highest"`` when the chosen learning rate is at the edge of the sweep's grid (the best may
        lie beyond it: widen the grid), else None."""
        lrs = sorted({h.lr for h in self.heads.values()})
        if self.best_key not in self.heads or len(lrs) < 2:
            return None
        lr = self.heads[self.best_key].lr
        return "lowest" if lr == lrs[0] else "highest" if lr == lrs[-1] else None


@dataclass(frozen=True)
class Head:
    """The settings of one head of a sweep: learning rate, blocks, pooled embedding."""

    lr: float
    layers: tuple[int, ...]
    pooled: bool = False

    @property
    def key(self) -> str:
        """Its flat name (``lr=0.01 layers=23,26+pooled``), the key of a sweep's figures in JSON."""
        return f"lr={self.lr:g} layers={','.join(str(b) for b in self.layers)}{'+pooled' if self.pooled else ''}"

    def __str__(self) -> str:
        return self.key


def head_key(lr: float, layers: Sequence[int], pooled: bool = False) -> str:
    return Head(float(lr), tuple(layers), pooled).key


# ---------------------------------------------------------------------------------------------------------------------
# Loading samples from a dataset and a cache


def load_samples(dataset, cache, split: str | None = None, *, progress: bool = False, stream: bool = True) -> list:
    """Features (from ``cache``, a :class:`dense.cache.FeatureCache`) + label maps for one split of a COCO dataset or
    a segmentation folder. A missing entry raises ``KeyError`` naming it (run ``dense extract``).

    ``stream=True``: :class:`probes.stream.CachedSample` (headers only; tokens and labels are read when used);
    ``False``: :class:`Sample` with everything in memory.
    """
    if stream:
        from functools import partial

        from probes.stream import cached_samples

        ids = list(dataset.ids(split))
        where = getattr(dataset, "label_path", None)  # segmentation folders name their label files in errors
        return cached_samples(cache, [str(i) for i in ids], [partial(dataset.label_map, i) for i in ids],
                              progress=progress, desc=f"open {split or 'all'}",
                              label_wheres=[partial(where, i) for i in ids] if where else None)
    out = []
    for i in tqdm(dataset.ids(split), desc=f"load {split or 'all'}", unit="img", disable=not progress):
        fmap = cache.load(str(i))
        label = dataset.label_map(i)
        if label.shape != tuple(fmap.image_hw):
            where = getattr(dataset, "label_path", None)
            where = f"{where(i)}" if where else f"the label map of {dataset.image_path(i)}"
            raise InputError(f"{where}: label map is {label.shape[0]} x {label.shape[1]} (H x W), its image "
                             f"{dataset.image_path(i)} is {fmap.image_hw[0]} x {fmap.image_hw[1]} (image id {i})")
        out.append(Sample(str(i), fmap, label))
    return out


def _check_samples(samples: Sequence, num_classes: int, what: str) -> dict:
    """Same encoder and layers for all; labels of in-memory samples in range (streamed ones: when read)."""
    if not samples:
        raise InputError(f"no {what} samples")
    spec = samples[0].encoder_spec
    for s in samples:
        e = s.encoder_spec
        if any(e.get(k) != spec.get(k) for k in (*IDENTITY_KEYS, "layers")):
            raise MismatchError(f"{what} sample {s.key}: features of {e}, the first sample's are {spec}")
        if isinstance(s, Sample):
            _check_label(s.key, s.label, num_classes, what)
    return spec


def _check_label(key: str, label: np.ndarray, num_classes: int, what: str = "train") -> np.ndarray:
    bad = ((label >= num_classes) | (label < 0)) & (label != IGNORE)
    if bad.any():
        raise InputError(f"{what} sample {key}: label values {np.unique(label[bad])[:8].tolist()} exceed the "
                         f"{num_classes} classes (or are negative; ignore = {IGNORE})")
    return label


# ---------------------------------------------------------------------------------------------------------------------
# The sweep


class _Heads(torch.nn.Module):
    """All heads of the sweep as stacked parameters; ``A`` and ``c`` fold the frozen BN into one linear map."""

    def __init__(self, in_dims: list[int], num_classes: int, seed: int):
        super().__init__()
        self.gamma = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(d)) for d in in_dims])
        self.beta = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(d)) for d in in_dims])
        # DINOv2's linear heads: weights ~ N(0, 0.01), bias 0. Every head of a layer set starts from the same draw,
        # so a head's result does not depend on which other heads share the sweep.
        self.weight = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(num_classes, d, generator=torch.Generator().manual_seed(seed)) * 0.01)
             for d in in_dims])
        self.bias = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(num_classes)) for _ in in_dims])


def _fold(heads: _Heads, cols: list[torch.Tensor], mu: torch.Tensor, sd: torch.Tensor
          ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each head's ``a_h [K, d_h]`` over its input columns ``cols[h]`` and the stacked ``c [H*K]``, so that head h's
    logits are ``x[:, cols[h]] @ a_h.T + c_h`` (``x``: tokens, plus the pooled embedding for ``+pooled`` heads)."""
    A, c_rows = [], []
    for h, idx in enumerate(cols):
        W = heads.weight[h] * heads.gamma[h][None, :]  # [K, d]
        a = W / sd[idx][None, :]  # [K, d]
        A.append(a)
        c_rows.append(heads.weight[h] @ heads.beta[h] + heads.bias[h] - a @ mu[idx])  # [K]
    return A, torch.cat(c_rows)


def _columns(spec: dict, layer_set: Sequence[int], d_all: int) -> torch.Tensor:
    have = list(spec["layers"])
    D = d_all // len(have)
    idx = []
    for b in block_indices(layer_set, spec.get("num_layers")):
        if b not in have:
            raise MismatchError(f"layer set {list(layer_set)}: block {b} is not in the features' {have}")
        k = have.index(b)
        idx.append(torch.arange(k * D, (k + 1) * D))
    return torch.cat(idx)


def _token_stats(samples: Sequence, d_all: int, e: int, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and variance over every training token (float64 sums), streamed one sample at a time:
    ``mu, var, sd`` over ``d_all`` token channels then ``e`` pooled channels (each image's pooled embedding counts
    once per token, as it is concatenated to every token)."""
    s1 = torch.zeros(d_all + e, dtype=torch.float64)
    s2 = torch.zeros(d_all + e, dtype=torch.float64)
    n = 0
    for tokens, pooled in _reads(samples):
        x = tokens.reshape(-1, d_all).float()  # [gh, gw, D] -> [N, D]
        s1[:d_all] += x.sum(0, dtype=torch.float64)
        s2[:d_all] += x.square().sum(0, dtype=torch.float64)
        if e:
            p = pooled.double()
            s1[d_all:] += p * x.shape[0]
            s2[d_all:] += p.square() * x.shape[0]
        n += x.shape[0]
    mu = s1 / n
    var = (s2 / n - mu * mu).clamp_min(0)
    return mu.float(), var.float(), (var + eps).sqrt().float()


def _reads(samples: Sequence):
    """``(tokens, pooled)`` per sample, in order; streamed samples are read one ahead on a thread."""
    from probes.stream import Prefetcher

    if all(isinstance(s, Sample) for s in samples):
        return (s.read() for s in samples)
    return iter(Prefetcher(lambda s: s.read(), samples))


def cell_counts(label: np.ndarray, cells_hw: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Integer label map ``[H, W]`` (IGNORE = -1) -> float32 ``[K, ch, cw]``: per cell, pixels of each class.

    Pixel (r, c) falls in the cell under its centre, ``(floor((r + 0.5) * ch / H), floor((c + 0.5) * cw / W))``: the
    same tiling as the patch grid over the resized image. :data:`IGNORE` pixels are not counted.
    """
    H, W = label.shape
    ch, cw = cells_hw
    row = ((2 * np.arange(H) + 1) * ch // (2 * H))[:, None]  # [H, 1]
    col = ((2 * np.arange(W) + 1) * cw // (2 * W))[None, :]  # [1, W]
    cell = (row * cw + col).ravel()  # [H*W]
    lab = label.ravel().astype(np.int64)
    keep = lab != IGNORE
    counts = np.bincount(cell[keep] * num_classes + lab[keep], minlength=ch * cw * num_classes)
    counts = counts.reshape(ch, cw, num_classes).transpose(2, 0, 1)  # [ch, cw, K] -> [K, ch, cw]
    return torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32))


def _batches(grids: list[tuple[int, int]], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of sample indices, each of one grid."""
    order = torch.randperm(len(grids), generator=gen).tolist()
    by_grid: dict[tuple[int, int], list[int]] = {}
    for i in order:
        by_grid.setdefault(grids[i], []).append(i)
    chunks = [idx[k:k + batch_size] for idx in by_grid.values() for k in range(0, len(idx), batch_size)]
    return [chunks[j] for j in torch.randperm(len(chunks), generator=gen).tolist()]


def train_probes(train: Sequence, val: Sequence, class_names: Sequence[str], config: ProbeConfig | None = None, *,
                 progress: bool = True) -> SweepResult:
    """Train every head of the sweep in one pass over ``train``; score each on ``val`` at original resolution.

    ``train`` / ``val``: :class:`Sample` (in memory) or :class:`probes.stream.CachedSample` (streamed from the
    cache), e.g. from :func:`load_samples`. Returns the best head (by val mIoU) as a :class:`LinearProbe` carrying
    ``class_names``, the features' encoder spec, its layers and ``meta`` (config, key, val figures).
    """
    cfg = config or ProbeConfig()
    t0 = time.perf_counter()
    K = len(class_names)
    spec = _check_samples(train, K, "train")
    _check_samples(val, K, "val")
    if any(val[0].encoder_spec.get(k) != spec.get(k) for k in IDENTITY_KEYS):  # before training, not after it
        raise MismatchError(f"val sample {val[0].key}: features of {val[0].encoder_spec}, the train features' are "
                                 f"{spec}")
    if val[0].encoder_spec.get("layers") != spec.get("layers"):
        raise MismatchError("train and val features hold different layers")
    d_all = spec["hidden_size"] * len(spec["layers"]) if spec.get("hidden_size") else train[0].read()[0].shape[-1]
    layer_sets = [tuple(ls) for ls in (cfg.layer_sets or [tuple(spec["layers"])])]
    # heads ordered by layer set, then pooled, then lr: the heads of a layer set are contiguous (one matmul)
    heads_cfg = [(lr, ls, pool) for ls in dict.fromkeys(layer_sets) for pool in dict.fromkeys(cfg.pooled)
                 for lr in cfg.lrs]
    E = 0
    if any(pool for _, _, pool in heads_cfg):
        dims = {s.pooled_dim for s in (*train, *val)}
        if None in dims or len(dims) != 1:
            raise MismatchError("+pooled heads need the pooled embedding in every sample's features (cache "
                                     "them with FeatureCache.for_encoder(..., pooled=True))")
        E = dims.pop()
    keys = [head_key(lr, ls, pool) for lr, ls, pool in heads_cfg]
    tok_cols = [_columns(spec, ls, d_all) for _, ls, _ in heads_cfg]
    cols = [torch.cat([c, torch.arange(d_all, d_all + E)]) if pool else c
            for c, (_, _, pool) in zip(tok_cols, heads_cfg, strict=True)]
    groups = {}  # layer set -> (its token columns, its head indices)
    for h, (_, ls, _) in enumerate(heads_cfg):
        groups.setdefault(ls, (tok_cols[h], []))[1].append(h)
    groups = [(_as_slice(c), slice(hs[0] * K, (hs[-1] + 1) * K)) for c, hs in groups.values()]  # columns, rows
    eps = 1e-5  # BatchNorm2d's default, so the saved module computes exactly what was trained
    mu, var, sd = _token_stats(train, d_all, E, eps)

    gen = torch.Generator().manual_seed(cfg.seed)  # batch order
    heads = _Heads([len(c) for c in cols], K, cfg.seed)
    opt_groups = [{"params": [heads.gamma[h], heads.beta[h], heads.weight[h], heads.bias[h]], "lr": lr}
                  for h, (lr, _, _) in enumerate(heads_cfg)]
    opt = torch.optim.AdamW(opt_groups, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]

    s = cfg.label_scale
    grids = [s_.grid_hw for s_ in train]
    in_memory = all(isinstance(s_, Sample) for s_ in train)
    if in_memory:  # tokens converted once, targets computed once
        store = getattr(torch, cfg.feature_dtype)
        tokens = [s_.fmap.tokens.to(store) for s_ in train]  # [gh, gw, D_all] each (no copy for float32)
        targets = [cell_counts(s_.label, (gh * s, gw * s), K) for s_, (gh, gw) in zip(train, grids, strict=True)]

    def load_batch(idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """``(tokens [gh, gw, D_all], pooled [E] or None, target [K, gh*s, gw*s])`` per sample of a batch."""
        if in_memory:
            return [(tokens[i], train[i].fmap.pooled, targets[i]) for i in idx]
        out = []
        for i in idx:
            x, p = train[i].read()
            gh, gw = grids[i]
            label = _check_label(train[i].key, train[i].read_label(), K)
            out.append((x, p, cell_counts(label, (gh * s, gw * s), K)))
        return out

    n_steps = cfg.epochs * len(_batches(grids, cfg.batch_size, torch.Generator().manual_seed(0)))
    H = len(heads_cfg)
    pooled_heads = [h for h, (_, _, pool) in enumerate(heads_cfg) if pool]
    history = {k: [] for k in keys}
    step = 0
    bar = tqdm(range(cfg.epochs), desc="probe", unit="epoch", disable=not progress)
    for _ in bar:
        sums, count = torch.zeros(H), 0
        batches = _batches(grids, cfg.batch_size, gen)
        loaded = (load_batch(idx) for idx in batches) if in_memory else iter(_prefetch(load_batch, batches))
        for idx, data in zip(batches, loaded, strict=True):
            gh, gw = grids[idx[0]]
            B = len(idx)
            t = torch.stack([d[2] for d in data])  # [B, K, gh*s, gw*s] pixel counts
            A, c = _fold(heads, cols, mu, sd)  # [K, d_h] per head, [H*K]
            A_tok = torch.cat([A[h][:, :len(tok_cols[h])] for h in range(H)]) if len(groups) == 1 else [
                torch.cat([A[h][:, :len(tok_cols[h])] for h in range(r.start // K, r.stop // K)]) for _, r in groups]
            P = None
            if pooled_heads:  # the pooled part of each head: a per-image constant added to its logits
                P = torch.zeros(H, K, E)
                P = P.index_put((torch.tensor(pooled_heads),), torch.stack([A[h][:, -E:] for h in pooled_heads]))
                P = P.reshape(H * K, E)  # [H*K, E]
            rows = []
            for x, p, _ in data:
                x = x.reshape(gh * gw, d_all).float()  # [gh, gw, D] -> [N, D]: a view for float32 tokens
                bias = c if P is None else c + P @ p.float()  # [H*K]
                if len(groups) == 1:  # one matmul for all heads: [N, D] @ [D, H*K]
                    rows.append(torch.addmm(bias, x[:, groups[0][0]], A_tok.T))
                else:  # one matmul per layer set over its own columns: [N, d] @ [d, n_h*K]
                    rows.append(torch.cat([torch.addmm(bias[r], x[:, cs], a.T)
                                           for (cs, r), a in zip(groups, A_tok, strict=True)], dim=1))  # [N, H*K]
            logits = torch.cat(rows)  # [BN, H*K]
            logits = logits.reshape(B, gh, gw, H * K).permute(0, 3, 1, 2)  # -> [B, H*K, gh, gw]
            if s > 1:
                logits = F.interpolate(logits, size=(gh * s, gw * s), mode="bilinear", align_corners=False)
            logp = F.log_softmax(logits.reshape(B, H, K, -1), dim=2)  # [B, H*K, h, w] -> [B, H, K, h*w]
            valid = t.sum().clamp_min(1)
            loss_h = -(t.reshape(B, 1, K, -1) * logp).sum((0, 2, 3)) / valid  # [H]: each head's own mean loss
            opt.zero_grad(set_to_none=True)
            loss_h.sum().backward()
            frac = step / max(n_steps, 1)  # cosine decay to 0 over the run
            for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            opt.step()
            step += 1
            sums += loss_h.detach() * B
            count += B
        for k, v in zip(keys, (sums / max(count, 1)).tolist(), strict=True):
            history[k].append(v)
        bar.set_postfix(loss=f"{min(h[-1] for h in history.values()):.3f}")

    probes = {}
    for h, ((lr, ls, pool), key) in enumerate(zip(heads_cfg, keys, strict=True)):
        idx = cols[h]
        probe = LinearProbe(len(idx), list(class_names), encoder_spec=spec, layers=list(ls), pooled=pool,
                            meta={"key": key, "lr": lr, "config": asdict(cfg)})
        with torch.no_grad():
            probe.bn.running_mean.copy_(mu[idx])
            probe.bn.running_var.copy_(var[idx])
            probe.bn.weight.copy_(heads.gamma[h])
            probe.bn.bias.copy_(heads.beta[h])
            probe.conv.weight.copy_(heads.weight[h][:, :, None, None])  # [K, d] -> [K, d, 1, 1]
            probe.conv.bias.copy_(heads.bias[h])
        probes[key] = probe.eval()

    val_figs = {k: figs for k, (figs, _) in score_probes(probes, val, boundary=False, progress=progress).items()}
    best_key = max(keys, key=lambda k: (np.nan_to_num(val_figs[k]["mIoU"], nan=-1.0), -keys.index(k)))
    best = probes[best_key]
    best.meta["val"] = {k: v for k, v in val_figs[best_key].items() if not k.startswith("IoU/")}
    return SweepResult(best=best, best_key=best_key, val=val_figs, history=history,
                       seconds=time.perf_counter() - t0, probes=probes,
                       heads={k: Head(float(lr), tuple(ls), pool) for k, (lr, ls, pool) in
                              zip(keys, heads_cfg, strict=True)})


def _as_slice(cols: torch.Tensor) -> slice | torch.Tensor:
    """Contiguous columns as a slice (a view, no copy), others as an index tensor."""
    lo, n = int(cols[0]), len(cols)
    return slice(lo, lo + n) if torch.equal(cols, torch.arange(lo, lo + n)) else cols


def _prefetch(fn, items):
    from probes.stream import Prefetcher

    return Prefetcher(fn, items)

"""Probe protocols from the papers, as sweep settings: what to extract, which layer sets and pooled variants to sweep.

    >>> p = protocol("best-block", num_layers=27)
    >>> cache = FeatureCache.for_encoder(root, enc, layers=p.layers, pooled=p.pooled_needed)
    >>> train_probes(train, val, names, ProbeConfig(layer_sets=p.layer_sets, pooled=p.pooled))

- ``last``: the last block's tokens (dense's default).
- ``last-k``: the last ``k`` blocks concatenated (DINOv2's linear evaluation uses the last 4).
- ``best-block``: one head per single block, the best chosen on val (the Perception Encoder paper's protocol: for
  SigLIP2-So400m, ADE20K 44.0 mIoU at block 24 of 27 vs 42.9 at the last).
- ``pooled``: the last block with the image's pooled MAP embedding concatenated to every token (TIPS; the protocol
  of the SigLIP 2 paper's probe figures, So/14 at 384: VOC 78.1, ADE20K 45.4).
- ``all``: every one of the above in one sweep, chosen on val.

All are heads of one sweep (keyed by learning rate, layer set and ``+pooled``), so one pass over the features trains
them together.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMES = ("last", "last-k", "best-block", "pooled", "all")


@dataclass(frozen=True)
class Protocol:
    layers: tuple[int, ...]  # blocks to extract (absolute indices)
    layer_sets: tuple[tuple[int, ...], ...]  # ProbeConfig.layer_sets
    pooled: tuple[bool, ...]  # ProbeConfig.pooled

    @property
    def pooled_needed(self) -> bool:
        """Must the cache hold the pooled embedding (``FeatureCache.for_encoder(..., pooled=True)``)?"""
        return any(self.pooled)


def last_k(k: int, num_layers: int) -> tuple[int, ...]:
    """The last ``k`` blocks, oldest first: ``last_k(4, 27) == (23, 24, 25, 26)``."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"k={k} must be in [1, {num_layers}]")
    return tuple(range(num_layers - k, num_layers))


def protocol(name: str, *, num_layers: int, k: int = 4, layers: tuple[int, ...] | None = None) -> Protocol:
    """The extraction layers and sweep settings of protocol ``name`` (see :data:`NAMES`) for a ``num_layers`` deep
    encoder. ``k``: blocks of ``last-k``; ``layers``: the candidate blocks of ``best-block`` (default: all)."""
    last = num_layers - 1
    k = min(k, num_layers)
    single = tuple((b,) for b in (layers if layers is not None else range(num_layers)))
    if name == "last":
        return Protocol((last,), ((last,),), (False,))
    if name == "last-k":
        return Protocol(last_k(k, num_layers), (last_k(k, num_layers),), (False,))
    if name == "best-block":
        return Protocol(tuple(sorted({b for (b,) in single})), single, (False,))
    if name == "pooled":
        return Protocol((last,), ((last,),), (True,))
    if name == "all":
        sets = tuple(dict.fromkeys([(last,), last_k(k, num_layers), *single]))
        layers = tuple(sorted({b for s in sets for b in s}))
        return Protocol(layers, sets, (False, True))
    raise ValueError(f"unknown protocol {name!r}; choose one of {NAMES}")

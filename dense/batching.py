"""The input pipeline of :meth:`dense.Encoder.extract_many` and the tower run on batches of mixed grids.

Three parts, each usable alone:

- :func:`prepared_stream`: read, decode, resize and normalize images (optionally in worker processes through a torch
  ``DataLoader``), yielding one :class:`Prepared` per input, in input order; a bad image becomes a record that carries
  its error instead of killing the stream;
- :func:`plan_batches`: group a window of images of different grids into batches whose padding stays small (sorted by
  token count, packed up to ``batch_size``);
- :func:`forward_tower`: one padded batch of images of any grids through the vision tower's parts (embeddings,
  :func:`embed_patches` -> encoder blocks -> ``post_layernorm``), without the MAP pooling head that features never
  use.

Why not the model's own ``forward``: it always runs the pooling head, whose ``nn.MultiheadAttention`` (batch_first)
turns its in-projection into a ``bmm`` on an expanded ``[N, D, 3D]`` weight copy at batch > 1 (seconds per image for
So400m on a CPU). Calling the parts gives the same tokens (``last_hidden_state``, ``hidden_states``) without it, and
stops after the deepest block asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from dense.errors import ImageError
from dense.preprocess import ImageInput, PixelConfig, choose_grid, load_image, patchify, to_pixels

if TYPE_CHECKING:
    from dense.compiled import CompiledTower


@dataclass(frozen=True)
class Prepared:
    """One input after reading: its pixels ``[3, gh*p, gw*p]`` (float32, normalized), or the error that stopped it."""

    index: int  # position in the input stream
    image_hw: tuple[int, int] | None = None  # original (H, W)
    grid_hw: tuple[int, int] | None = None  # (gh, gw)
    pixels: torch.Tensor | None = None  # [3, gh*p, gw*p]
    error: str | None = None  # the ImageError message (names the input) when it could not be read

    @property
    def n_tokens(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    def pin_memory(self) -> Prepared:
        """Called by the DataLoader's pin-memory thread (CUDA only), so host -> device copies can be asynchronous."""
        return self if self.pixels is None else replace(self, pixels=self.pixels.pin_memory())


class _Reader:
    """A picklable "dataset" whose keys are ``(index, image)`` pairs: the sampler hands images to workers lazily.

    Holds only the pixel settings (not the model), so spawning workers stays cheap.
    """

    def __init__(self, cfg: PixelConfig, max_patches: int):
        self.cfg = cfg
        self.max_patches = max_patches

    def __getitem__(self, key: tuple[int, ImageInput]) -> Prepared:
        index, image = key
        try:
            rgb = load_image(image)  # uint8 [H, W, 3]
        except ImageError as e:
            return Prepared(index, error=str(e))
        grid_hw = choose_grid(rgb.shape[:2], self.cfg.patch_size, self.max_patches)
        return Prepared(index, tuple(rgb.shape[:2]), grid_hw, to_pixels(rgb, grid_hw, self.cfg))


def _identity(x):
    return x


def default_num_workers(device: torch.device, total: int | None) -> int:
    """Worker processes for reading: 0 on CPU devices and for a handful of images, else up to 8, one fewer than the
    threads this process computes with (:func:`dense.device.set_threads`; one core kept free).

    On a CPU device the model already uses every core; a worker would only take cycles from its matmuls (reading a
    JPEG costs little next to an So400m forward), and the model's OpenMP threads stall when one is preempted. On a
    GPU the model waits for the CPU, so decoding and resizing go to workers.
    """
    if device.type == "cpu" or (total is not None and total < 16):
        return 0
    return max(0, min(8, torch.get_num_threads() - 1))


def prepared_stream(images: Iterable[ImageInput], cfg: PixelConfig, max_patches: int, *, num_workers: int = 0,
                    pin_memory: bool = False, prefetch_factor: int = 4) -> Iterator[Prepared]:
    """Each input read, grid-chosen, resized and normalized, in input order (:class:`Prepared`, ``error`` set if bad).

    With ``num_workers > 0`` a torch ``DataLoader`` does the work in worker processes; its sampler pulls images from
    ``images`` lazily (at most ``num_workers * prefetch_factor`` in flight), so a generator of millions of paths is
    fine, and results come back in input order.
    """
    reader = _Reader(cfg, max_patches)
    keys = enumerate(images)
    if num_workers <= 0:
        yield from map(reader.__getitem__, keys)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(reader, sampler=keys, batch_size=None, collate_fn=_identity, num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=prefetch_factor, in_order=True)
    yield from loader


# ---------------------------------------------------------------------------------------------------------------------
# Batches of mixed grids


def plan_batches(token_counts: Sequence[int], batch_size: int, keys: Sequence | None = None) -> list[list[int]]:
    """Positions ``0..n-1`` grouped into batches of at most ``batch_size``, padding kept low.

    Sorted by token count (longest first; ties by ``keys``, e.g. the grid, so equal grids sit together and need no
    mask), then cut into consecutive runs: each batch pads only to its own longest member.
    """
    n = len(token_counts)
    keys = keys if keys is not None else [0] * n
    order = sorted(range(n), key=lambda k: (-token_counts[k], keys[k], k))
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def padding_waste(token_counts: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded positions / all positions computed, over ``batches`` (positions into ``token_counts``)."""
    padded = sum(max(token_counts[k] for k in b) * len(b) for b in batches)
    real = sum(token_counts[k] for b in batches for k in b)
    return 1.0 - real / padded if padded else 0.0


def embed_patches(vision: torch.nn.Module, family: str, pixels: Sequence[torch.Tensor], *, device: torch.device,
                  dtype: torch.dtype, non_blocking: bool = False) -> tuple[torch.Tensor, list[int]]:
    """The tower's embedding step, the input of block 0: images of any grids, as normalized pixels ``[3, gh*p, gw*p]``
    each -> ``(x [B, N, D], lengths)``, patch + position embeddings, each image zero-padded to the longest ``N``.

    Fixed-resolution SigLIP: the patch conv and the position grid resized to each image's grid
    (``interpolate_pos_encoding``), one call per distinct grid. NaFlex: channel-last patches with ``spatial_shapes``.
    """
    p = vision.config.patch_size
    B = len(pixels)
    grids = [(int(px.shape[-2]) // p, int(px.shape[-1]) // p) for px in pixels]
    lengths = [gh * gw for gh, gw in grids]
    N = max(lengths)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, dtype, non_blocking=non_blocking)

    if family == "siglip":
        x = None
        by_grid: dict[tuple[int, int], list[int]] = {}
        for b, g in enumerate(grids):
            by_grid.setdefault(g, []).append(b)
        for g, idx in by_grid.items():
            px = torch.stack([to_device(pixels[b]) for b in idx])  # [b, 3, gh*p, gw*p]; pinned copies stay async
            emb = vision.embeddings(px, interpolate_pos_encoding=True)  # [b, gh*gw, D]
            if len(by_grid) == 1:
                return emb, lengths
            if x is None:
                x = emb.new_zeros(B, N, emb.shape[-1])  # [B, N, D], zero padding
            x[idx, : g[0] * g[1]] = emb
        return x, lengths
    patches = torch.zeros(B, N, p * p * 3, dtype=dtype, device=device)  # [B, N, p*p*3]
    for b, px in enumerate(pixels):
        patches[b, : lengths[b]] = patchify(to_device(px)[None], p)[0]  # [1, 3, gh*p, gw*p] -> [gh*gw, p*p*3]
    shapes = torch.tensor(grids, dtype=torch.long, device=device)  # [B, 2]
    return vision.embeddings(patches, shapes), lengths  # [B, N, D]


def forward_tower(vision: torch.nn.Module, family: str, pixels: Sequence[torch.Tensor], layers: Sequence[int], *,
                  device: torch.device, dtype: torch.dtype, non_blocking: bool = False,
                  compiled: CompiledTower | None = None) -> list[torch.Tensor]:
    """Images of any grids, as normalized pixels ``[3, gh*p, gw*p]`` each -> tokens ``[gh*gw, D * len(layers)]`` each.

    One padded batch (:func:`embed_patches`): each image's sequence is zero-padded to the longest, and padded keys are
    masked in every block (transformers' own ``create_bidirectional_mask``, in the form the attention implementation
    wants; no mask at all when the grids are equal). ``layers`` are absolute block indices; the last block is read
    after ``post_layernorm`` (``last_hidden_state``), the others raw (``hidden_states[b + 1]``). Blocks after the
    deepest one asked for are not run. Returns float32 CPU tensors, in the order of ``pixels``.

    With ``compiled`` (a :class:`dense.compiled.CompiledTower` of ``vision``), the embeddings run eagerly as above and
    the blocks run compiled, padded further to a static bucket with the padded keys masked.
    """
    from transformers.masking_utils import create_bidirectional_mask

    from dense.compiled import Blocks

    B = len(pixels)
    x, lengths = embed_patches(vision, family, pixels, device=device, dtype=dtype, non_blocking=non_blocking)
    N = max(lengths)

    if compiled is not None:
        out = compiled(x, lengths, layers).float().cpu()  # [B, bucket, D * L]
        return [out[b, : lengths[b]].clone() for b in range(B)]  # [B, bucket, D*L] -> B x [gh*gw, D*L]
    mask = None
    if min(lengths) < N:
        valid = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).to(device, torch.int32)  # [B, N], 1 = real
        mask = create_bidirectional_mask(config=vision.config, inputs_embeds=x, attention_mask=valid)
    out = Blocks(vision, layers)(x, mask).float().cpu()  # [B, N, D * L], the compiled tower's loop run eagerly
    return [out[b, : lengths[b]].clone() for b in range(B)]  # [B, N, D*L] -> B x [gh*gw, D*L], padding dropped

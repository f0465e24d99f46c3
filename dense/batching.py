"""The input pipeline of :meth:`dense.Encoder.extract_many` and the tower run on batches of mixed grids.

Three parts, each usable alone:

- :func:`prepared_stream`: read, decode, resize and normalize images (optionally in worker processes through a torch
  ``DataLoader``), yielding one :class:`Prepared` per input, in input order; a bad image becomes a record that carries
  its error instead of killing the stream;
- :func:`plan_batches`: group a packing group of images of different grids into batches whose padding stays small
  (sorted by token count, packed up to ``batch_size``);
- :func:`forward_tower`: one padded batch of images of any grids through the vision tower's parts (embeddings,
  :func:`embed_patches` -> encoder blocks -> ``post_layernorm``), without the MAP pooling head that features never
  use; :func:`to_host` and :func:`image_tokens` bring its tokens to the CPU (pinned, without blocking, from a GPU).

Why not the model's own ``forward``: it always runs the pooling head, whose ``nn.MultiheadAttention`` (batch_first)
turns its in-projection into a ``bmm`` on an expanded ``[N, D, 3D]`` weight copy at batch > 1 (seconds per image for
So400m on a CPU). Calling the parts gives the same tokens (``last_hidden_state``, ``hidden_states``) without it, and
stops after the deepest block asked for.
"""

from __future__ import annotations

import os
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


def local_world_size(env=None) -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside a launcher)."""
    env = os.environ if env is None else env
    return max(1, int(env.get("LOCAL_WORLD_SIZE", 1)))


def default_num_workers(device: torch.device, total: int | None, *, local_ranks: int | None = None) -> int:
    """Worker processes for reading: 0 on CPU devices and for a handful of images, else up to 8: one fewer than the
    threads this process computes with (:func:`dense.device.set_threads`; one core kept free); under torchrun, the
    machine's usable cores (one kept free) shared by its ``local_ranks`` processes (default
    :func:`local_world_size`; torchrun gives each rank one OpenMP thread): 8 ranks on 32 cores start 3 workers each.

    On a CPU device the model already uses every core; a worker would only take cycles from its matmuls (reading a
    JPEG costs little next to an So400m forward), and the model's OpenMP threads stall when one is preempted. On a
    GPU the model waits for the CPU, so decoding and resizing go to workers.
    """
    if device.type == "cpu" or (total is not None and total < 16):
        return 0
    local_ranks = local_world_size() if local_ranks is None else max(1, local_ranks)
    if local_ranks > 1:
        from dense.device import usable_cores

        return max(0, min(8, (usable_cores() - 1) // local_ranks))
    return max(0, min(8, torch.get_num_threads() - 1))


def prepared_stream(images: Iterable[ImageInput], cfg: PixelConfig, max_patches: int, *, num_workers: int = 0,
                    pin_memory: bool = False, prefetch_factor: int = 4, read_ahead: int = 0) -> Iterator[Prepared]:
    """Each input read, grid-chosen, resized and normalized, in input order (:class:`Prepared`, ``error`` set if bad).

    With ``num_workers > 0`` a torch ``DataLoader`` does the work in worker processes; its sampler pulls images from
    ``images`` lazily (at most ``num_workers * prefetch_factor`` in flight), so a generator of millions of paths is
    fine, and results come back in input order. Without workers, ``read_ahead > 0`` reads up to that many inputs
    ahead in one thread of this process (decoding and resizing mostly release the GIL, so they overlap the model's
    work on a CPU device, where worker processes would compete with its threads).
    """
    reader = _Reader(cfg, max_patches)
    keys = enumerate(images)
    if num_workers <= 0:
        stream = map(reader.__getitem__, keys)
        yield from (_read_ahead(stream, read_ahead) if read_ahead > 0 else stream)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(reader, sampler=keys, batch_size=None, collate_fn=_identity, num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=prefetch_factor, in_order=True)
    yield from loader


def _read_ahead(stream: Iterator, depth: int) -> Iterator:
    """``stream``'s items, produced by one background thread at most ``depth`` ahead; its exceptions are raised
    here; closing this generator stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce():
        try:
            for item in stream:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # raised in the consumer's thread
            put((end, e))

    thread = threading.Thread(target=produce, name="dense-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


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
                  compiled: CompiledTower | None = None) -> tuple[torch.Tensor, list[int]]:
    """Images of any grids, as normalized pixels ``[3, gh*p, gw*p]`` each -> ``(tokens [B, N, D * len(layers)],
    lengths)``: image b's tokens are ``tokens[b, :lengths[b]]`` (``[gh*gw, D*L]``), the rest is padding.

    One padded batch (:func:`embed_patches`): each image's sequence is zero-padded to the longest, and padded keys are
    masked in every block (transformers' own ``create_bidirectional_mask``, in the form the attention implementation
    wants; no mask at all when the grids are equal). ``layers`` are absolute block indices; the last block is read
    after ``post_layernorm`` (``last_hidden_state``), the others raw (``hidden_states[b + 1]``). Blocks after the
    deepest one asked for are not run. The tokens stay where the model ran, in its dtype (no copy for one layer; the
    blocks asked for are written into one buffer as they are made, never kept apart and concatenated): moving them
    to the host is :func:`to_host`'s job.

    With ``compiled`` (a :class:`dense.compiled.CompiledTower` of ``vision``), the embeddings run eagerly as above and
    the blocks run compiled, padded further to a static bucket with the padded keys masked.
    """
    from transformers.masking_utils import create_bidirectional_mask

    from dense.compiled import Blocks

    x, lengths = embed_patches(vision, family, pixels, device=device, dtype=dtype, non_blocking=non_blocking)
    B, N, D = x.shape

    if compiled is not None:
        return compiled(x, lengths, layers), lengths  # [B, bucket, D * L]
    mask = None
    if min(lengths) < N:
        valid = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).to(device, torch.int32)  # [B, N], 1 = real
        mask = create_bidirectional_mask(config=vision.config, inputs_embeds=x, attention_mask=valid)
    return Blocks(vision, layers)(x, mask), lengths  # [B, N, D * L], the compiled tower's loop run eagerly


def to_host(tokens: torch.Tensor) -> tuple[torch.Tensor, object | None]:
    """``tokens`` on the CPU: as they are when already there; from a GPU, copied in their own dtype (bf16: half the
    bytes of float32) into pinned memory without blocking. Returns ``(host tensor, event)``: the copy is complete once
    ``event.synchronize()`` returns (None: nothing to wait for), so the GPU can start the next batch meanwhile."""
    if tokens.device.type != "cuda":
        return tokens, None
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)  # torch's caching host allocator reuses it
    host.copy_(tokens, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def image_tokens(host: torch.Tensor, b: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Image ``b``'s tokens ``[n, C]`` from host tokens ``[B, N, C]`` (:func:`to_host`), in ``dtype``, padding dropped.

    A view where nothing changes (same dtype, pageable memory), else one copy; called per image as it is needed, so
    a batch is never held twice (bf16 and float32) at once. Pinned memory is always copied out, so that results a
    caller keeps do not hold torch's pinned blocks.
    """
    pinned = torch.cuda.is_available() and host.is_pinned()
    return host[b, :n].to(dtype, copy=pinned)  # [B, N, C] -> [n, C]

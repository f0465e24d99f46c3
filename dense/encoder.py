"""The Encoder: SigLIP / SigLIP 2 vision towers turning images into FeatureMaps, and the two ways to build one.

Two checkpoint families, both through transformers' own classes:

- ``siglip`` (fixed resolution, e.g. ``google/siglip2-so400m-patch14-384``): ``SiglipVisionModel`` with
  ``interpolate_pos_encoding=True`` (bicubic resize of the position grid to the image's own grid);
- ``siglip2`` (NaFlex, e.g. ``google/siglip2-so400m-patch16-naflex``): ``Siglip2VisionModel`` fed channel-last patches,
  ``spatial_shapes`` and an attention mask.

Only the vision tower is loaded for feature extraction; the text tower, tokenizer and ``logit_scale``/``logit_bias``
load the first time text is needed (:meth:`Encoder.text_parts`). Files (resolving, strict loading, fingerprints,
calibration) are :mod:`dense.checkpoint`'s job.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from dense._progress import tqdm
from dense.batching import Prepared, default_num_workers, forward_tower, plan_batches, prepared_stream
from dense.checkpoint import (
    RANDOM_SPECS,
    Calibration,
    fingerprint,
    load_strict,
    model_classes,
    pixel_config,
    quiet_transformers,
    read_calibration,
    read_tensors,
    resolve_checkpoint,
)
from dense.compiled import CompiledTower, check_compile_option, stored_decision, tell_how_to_measure
from dense.device import ensure_threads, resolve_device, resolve_dtype
from dense.errors import CheckpointError, ImageError, InputError
from dense.features import RULES_VERSION, FeatureMap, block_indices
from dense.preprocess import ImageInput, PixelConfig, check_max_patches, choose_grid, load_image, to_pixels

log = logging.getLogger("dense")


@dataclass(frozen=True)
class TextParts:
    """What text needs: the text tower, its tokenizer (None for random encoders) and the sigmoid calibration."""

    model: torch.nn.Module
    tokenizer: object | None
    logit_scale: torch.Tensor  # scalar, log of the temperature (probabilities use exp(logit_scale))
    logit_bias: torch.Tensor  # scalar
    max_length: int  # the text length the checkpoint was trained with (64 for So400m)


class Execution(NamedTuple):
    """How an Encoder runs its tower on this machine (see :meth:`Encoder.execution`)."""

    tower: CompiledTower | None  # the compiled blocks, or None: transformers' layers as they are
    why: str  # what chose it: "compile=True", "compile=False", "record" (dense compile-check's) or "no record"


class Encoder:
    """A SigLIP / SigLIP 2 vision tower that turns images into :class:`~dense.FeatureMap` s.

    Build it with :func:`load_encoder` or :func:`random_encoder`. ``extract`` one image, or ``extract_many`` for a
    stream, batched by grid. ``compile=`` chooses between transformers' layers and the compiled tower
    (:mod:`dense.compiled`); :meth:`execution` says which runs here.
    """

    def __init__(self, vision: torch.nn.Module, pixels: PixelConfig, *, name: str, family: str, source: str | None,
                 full_config, device: torch.device, dtype: torch.dtype, fingerprint: str,
                 calibration: Calibration | None = None, compile: bool | str = "auto"):
        check_compile_option(compile)
        self.vision = vision.eval().requires_grad_(False)
        self.pixels = pixels
        self.name = name  # as the user typed it: for messages only; identity is the fingerprint
        self.fingerprint = fingerprint
        self.calibration = calibration or Calibration()
        self.family = family
        self.source = source  # a folder / hub id to load the text side from, None for random weights
        self.full_config = full_config  # SiglipConfig / Siglip2Config (text + vision)
        self.device = device
        self.dtype = dtype
        self._text: TextParts | None = None
        self._compile = compile
        self._execution: Execution | None = None  # fixed on first use

    # --- facts ------------------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.pixels.patch_size

    @property
    def hidden_size(self) -> int:
        return self.vision.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.vision.config.num_hidden_layers

    def spec(self, *, max_patches: int | None = None, layers: tuple[int, ...] = (-1,)) -> dict:
        """What identifies features made by this encoder: for cache keys and trained probes.

        The checkpoint is identified by :attr:`fingerprint`, not by the name typed to load them; ``rules`` is
        :data:`dense.features.RULES_VERSION`, the version of dense's own pixel and token rules.
        """
        return {"fingerprint": self.fingerprint, "rules": RULES_VERSION, "family": self.family,
                "patch_size": self.patch_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "max_patches": int(self.pixels.max_patches if max_patches is None else max_patches),
                "layers": list(block_indices(layers, self.num_layers)),
                "dtype": str(self.dtype).removeprefix("torch.")}

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, family={self.family}, patch_size={self.patch_size}, "
                f"hidden={self.hidden_size}, layers={self.num_layers}, max_patches={self.pixels.max_patches}, "
                f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})")

    # --- pixels -> tokens -------------------------------------------------------------------------------------------
    def block_index(self, layer: int) -> int:
        return block_indices((layer,), self.num_layers)[0]

    @torch.inference_mode()
    def forward_pixels(self, pixels: torch.Tensor, layers: tuple[int, ...] = (-1,)) -> torch.Tensor:
        """Normalized pixels ``[B, 3, gh*p, gw*p]`` (one grid) -> tokens ``[B, gh, gw, D * len(layers)]`` (float32 CPU).

        Layer ``-1`` (the last block) is read after ``post_layernorm`` (transformers' ``last_hidden_state``, what the
        MAP head sees); other blocks are read raw (transformers' ``hidden_states[b + 1]``). The pooling head is not run.
        """
        B, _, h, w = pixels.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        tokens = self.forward_batch(list(pixels), layers)  # B x [gh*gw, D*L]
        return torch.stack(tokens).reshape(B, gh, gw, -1)  # [B, gh*gw, D*L] -> [B, gh, gw, D*L]

    @torch.inference_mode()
    def forward_batch(self, pixels: list[torch.Tensor], layers: tuple[int, ...] = (-1,)) -> list[torch.Tensor]:
        """Normalized pixels of any grids, ``[3, gh*p, gw*p]`` each -> tokens ``[gh*gw, D * len(layers)]`` each.

        One padded, masked batch (see :func:`dense.batching.forward_tower`); tokens equal the one-image path.
        """
        blocks = [self.block_index(i) for i in layers]
        return forward_tower(self.vision, self.family, pixels, blocks, device=self.device, dtype=self.dtype,
                             non_blocking=self.device.type == "cuda", compiled=self.execution().tower)

    @property
    def compile(self) -> bool | str:
        """The ``compile=`` option: ``True``, ``False`` or ``"auto"`` (this machine's stored record). Settable."""
        return self._compile

    @compile.setter
    def compile(self, value: bool | str) -> None:
        check_compile_option(value)
        self._compile, self._execution = value, None

    @property
    def compiled(self) -> bool:
        """Whether the blocks run compiled (:mod:`dense.compiled`); resolves ``compile="auto"`` (never measures)."""
        return self.execution().tower is not None

    def execution(self) -> Execution:
        """How the tower runs here, fixed on first use: compiled or transformers' layers, and why.

        ``compile=True``/``False`` is obeyed; ``"auto"`` follows this machine's record in ``dense_home()/compile.json``
        when there is one (written only by :func:`dense.compiled.check_compile`, ``dense compile-check``), and is
        eager otherwise, saying once per process how to measure. Nothing is measured here, and the batch size a
        caller gives is always the one that runs.
        """
        if self._execution is None:
            record = stored_decision(self.vision, device=self.device, dtype=self.dtype) or {}
            if self.compile != "auto":
                on, why = bool(self.compile), f"compile={self.compile}"
            else:
                on, why = bool(record.get("compile")), "record" if record else "no record"
                if not record:
                    tell_how_to_measure(self.vision)
            graphs = on and self.device.type == "cuda" and bool(record.get("cudagraphs"))  # measured where set
            tower = (CompiledTower(self.vision, budget=self.pixels.max_patches, device=self.device, cudagraphs=graphs)
                     if on else None)
            self._execution = Execution(tower, why)
        return self._execution

    def prepare(self, image: ImageInput, max_patches: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """Read an image and choose its grid: ``(uint8 [H, W, 3], (gh, gw))``."""
        budget = check_max_patches(max_patches) or self.pixels.max_patches  # 0 is an error, not the default
        rgb = load_image(image)
        return rgb, choose_grid(rgb.shape[:2], self.patch_size, budget)

    def feature_map(self, tokens: torch.Tensor, image_hw, grid_hw, max_patches, layers) -> FeatureMap:
        gh, gw = grid_hw
        p = self.patch_size
        return FeatureMap(tokens=tokens, image_hw=tuple(int(v) for v in image_hw), resized_hw=(gh * p, gw * p),
                          patch_size=p, layers=tuple(self.block_index(i) for i in layers),
                          encoder_spec=self.spec(max_patches=max_patches, layers=layers))

    def extract(self, image: ImageInput, *, max_patches: int | None = None, layers: tuple[int, ...] = (-1,)
                ) -> FeatureMap:
        """One image (path, PIL image or uint8 ``[H, W, 3]``) -> :class:`FeatureMap` at its native aspect ratio."""
        rgb, grid_hw = self.prepare(image, max_patches)
        pixels = to_pixels(rgb, grid_hw, self.pixels)[None]  # [1, 3, gh*p, gw*p]
        tokens = self.forward_pixels(pixels, layers)[0]  # [gh, gw, D*L]
        return self.feature_map(tokens, rgb.shape[:2], grid_hw, max_patches, layers)

    def extract_many(self, images: Iterable[ImageInput], *, max_patches: int | None = None,
                     layers: tuple[int, ...] = (-1,), batch_size: int = 8, on_error: str = "raise",
                     progress: bool = True, num_workers: int | None = None, window: int | None = None
                     ) -> Iterator[FeatureMap | None]:
        """Extract a stream of images, yielding one result per input, in input order.

        Images are read (decoded, resized, normalized) in ``num_workers`` worker processes (``None``: 0 on a CPU device,
        where the model already uses every core, and for fewer than 16 images; up to 8 on a GPU; see
        :func:`dense.batching.default_num_workers`). They are batched a ``window`` at a time (default
        ``8 * batch_size``): within a window, images are sorted by token count and packed ``batch_size`` at a time;
        images of different grids share a batch, padded and masked, with the same tokens as :meth:`extract`.
        ``on_error``: ``"raise"`` (default) stops at the first unreadable image with an :class:`ImageError` naming it;
        ``"skip"`` logs it and yields ``None`` in its place, so results still line up with inputs.
        """
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        total = len(images) if hasattr(images, "__len__") else None
        if num_workers is None:
            num_workers = default_num_workers(self.device, total)
        window = int(window or 8 * batch_size)
        max_patches = check_max_patches(max_patches) or self.pixels.max_patches  # before any image is read
        stream = prepared_stream(images, self.pixels, max_patches, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda")
        bar = tqdm(total=total, desc="extract", unit="img", disable=not progress)
        chunk: list[Prepared] = []
        try:
            for item in stream:
                chunk.append(item)
                if len(chunk) == window:
                    yield from self._extract_window(chunk, max_patches, layers, batch_size, on_error, bar)
                    chunk = []
            if chunk:
                yield from self._extract_window(chunk, max_patches, layers, batch_size, on_error, bar)
        finally:
            bar.close()
            stream.close()  # stops DataLoader workers when the caller stops early

    def _extract_window(self, window: list[Prepared], max_patches, layers, batch_size, on_error, bar
                        ) -> Iterator[FeatureMap | None]:
        for item in window:
            if item.error is not None:
                if on_error == "raise":
                    raise ImageError(item.error)
                log.warning("dense: skipped unreadable image: %s", item.error)  # once, naming the file
        ok = [item for item in window if item.error is None]
        results: dict[int, FeatureMap] = {}
        for batch in plan_batches([it.n_tokens for it in ok], batch_size, keys=[it.grid_hw for it in ok]):
            tokens = self.forward_batch([ok[k].pixels for k in batch], layers)  # b x [gh*gw, D*L]
            for k, t in zip(batch, tokens, strict=True):
                gh, gw = ok[k].grid_hw
                t = t.reshape(gh, gw, -1)  # [gh*gw, D*L] -> [gh, gw, D*L]
                results[ok[k].index] = self.feature_map(t, ok[k].image_hw, ok[k].grid_hw, max_patches, layers)
        for item in window:
            bar.update(1)
            yield results.get(item.index)

    # --- text side (loaded on first use) ----------------------------------------------------------------------------
    def text_parts(self) -> TextParts:
        """The text tower, tokenizer and ``logit_scale``/``logit_bias``, loaded (strictly) on first call."""
        if self._text is None:
            if self.full_config is None:
                raise CheckpointError(f"{self.name}: a vision-only checkpoint has no text tower; load the full "
                                      f"SiglipModel / Siglip2Model folder for text queries")
            self._text = self._load_text()
        return self._text

    def _load_text(self) -> TextParts:
        _, _, text_cls, _ = model_classes(self.family)
        max_length = self.full_config.text_config.max_position_embeddings
        if self.source is None:  # random weights: same architecture, no tokenizer
            model = text_cls(self.full_config.text_config)
            scale, bias = torch.tensor(np.log(10.0)), torch.tensor(-10.0)
            tokenizer = None
        else:
            model = load_strict(text_cls, self.source, allowed_prefixes=("vision_model.", "logit_"),
                                 dtype=self.dtype, attn_implementation=self.vision.config._attn_implementation)
            logits = read_tensors(self.source, ["logit_scale", "logit_bias"])
            scale, bias = logits["logit_scale"].float().reshape(()), logits["logit_bias"].float().reshape(())
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.source)
            except Exception as e:  # tokenizers' own errors name no file: a damaged tokenizer.json, for one
                raise CheckpointError(f"{self.source}: its tokenizer cannot be loaded ({type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
        model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        return TextParts(model=model, tokenizer=tokenizer, logit_scale=scale, logit_bias=bias, max_length=max_length)


def tower_params(vision_cls, vision_config) -> int:
    """The parameter count of the vision tower ``vision_config`` describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in vision_cls._from_config(vision_config).parameters())


def load_encoder(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = "auto", attn_implementation: str = "sdpa",
                 calibration: Calibration | dict | str | os.PathLike | None = None, compile: bool | str = "auto",
                 threads: int | None = None) -> Encoder:
    """Load a SigLIP / SigLIP 2 vision tower for dense features.

    Args:
        name_or_path: a hub id (``google/siglip2-so400m-patch14-384``, ``google/siglip2-so400m-patch16-naflex``),
            a local ``save_pretrained`` folder (a full ``SiglipModel``/``Siglip2Model`` or a vision tower alone), or a
            bundled name (``"shapes-tiny"``, ``"shapes-tiny-v2"``).
        device: where the model runs; features always come back on the CPU as float32.
        dtype: weights and activations. ``"auto"`` (default; ``None`` means the same): bfloat16 on GPUs of compute
            capability 8+ and on CPUs with native bf16 (AMX or AVX512-BF16), float32 otherwise (CPUs without bf16
            instructions emulate it and run it slower than float32) and for towers under
            :data:`dense.device.SMALL_TOWER_PARAMS` parameters (the bundled ``shapes-tiny`` models: the same
            figures on every CPU); float16 on a CPU is refused. ``"fp32"`` for
            bit-stable features. ``python benchmarks/extract.py [--device cuda]`` times both dtypes on the machine at
            hand. The chosen dtype is in ``repr(encoder)`` and ``encoder.spec()``.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
        calibration: the defaults dense tasks use (heatmap method, thresholds, templates, token budget; see
            :class:`Calibration`). None reads ``dense_calibration.json`` beside the weights, or neutral defaults
            when there is none; a dict, a JSON file or a :class:`Calibration` overrides it.
        compile: run the encoder blocks through inductor at static shapes (:mod:`dense.compiled`): ``True``,
            ``False`` (plain transformers layers, always works), or ``"auto"`` (default): compiled only where
            ``dense compile-check`` (:func:`dense.compiled.check_compile`) measured on this machine that it pays;
            without that record, plain layers (and one line saying how to measure).
        threads: the CPU threads of this process from now on (torch's, BLAS's through threadpoolctl, the cap of
            decode workers: :func:`dense.device.set_threads`). None: what this process already set, else the default
            of :func:`dense.device.default_threads` (``OMP_NUM_THREADS`` when set, else the cores the machine's
            load leaves free), so that a shared machine does not make every op wait for a preempted thread.

    Loading is strict: a missing, mismatched or unexpected weight (other than the text tower's, which loads only when
    text is first needed) raises :class:`CheckpointError`.
    """
    from transformers import AutoConfig

    check_compile_option(compile)
    ensure_threads(threads)
    device = resolve_device(device)  # before any file is read: a CPU-only torch asked for CUDA says so at once
    source = resolve_checkpoint(name_or_path)
    with quiet_transformers():  # SiglipConfig builds a default text config first and warns about its token ids
        config = AutoConfig.from_pretrained(source)
    family = {"siglip": "siglip", "siglip_vision_model": "siglip", "siglip2": "siglip2",
              "siglip2_vision_model": "siglip2"}.get(config.model_type)
    if family is None:
        raise CheckpointError(f"{name_or_path}: model_type {config.model_type!r} is not SigLIP or SigLIP 2")
    full_cls, vision_cls, _, _ = model_classes(family)
    dtype = resolve_dtype(dtype, device, params=tower_params(vision_cls, getattr(config, "vision_config", config)))
    vision = load_strict(vision_cls, source, allowed_prefixes=("text_model.", "logit_"), dtype=dtype,
                          attn_implementation=attn_implementation).to(device)
    full_config = config if isinstance(config, full_cls) else None
    calibration = read_calibration(calibration, source)
    pixels = pixel_config(source, vision.config, family)
    if calibration.max_patches:
        pixels = replace(pixels, max_patches=int(calibration.max_patches))
    return Encoder(vision, pixels, name=str(name_or_path), family=family,
                   source=source if full_config is not None else None, full_config=full_config,
                   device=device, dtype=dtype, fingerprint=fingerprint(source), calibration=calibration,
                   compile=compile)


def random_encoder(spec: str = "so400m-patch14-384", *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | str | None = "auto", attn_implementation: str = "sdpa",
                   seed: int = 0, compile: bool | str = "auto") -> Encoder:
    """RANDOM WEIGHTS, for benchmarks and tests only: the exact architecture of ``spec`` (see ``RANDOM_SPECS``).

    Speed and memory do not depend on weight values, so ``random_encoder("so400m-patch14-384")`` times So400m
    without downloading it. Its features mean nothing. The weights are built in ``dtype`` directly (no float32 copy
    on the way), so the same seed gives different values in different dtypes.
    """
    check_compile_option(compile)
    if spec not in RANDOM_SPECS:
        raise InputError(f"unknown spec {spec!r}; choose one of {sorted(RANDOM_SPECS)}")
    arch = RANDOM_SPECS[spec]
    full_cls, vision_cls, _, _ = model_classes(arch["family"])
    config = full_cls(text_config=arch["text"], vision_config=arch["vision"])
    config.vision_config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, params=tower_params(vision_cls, config.vision_config))
    torch.manual_seed(seed)
    vision = vision_cls._from_config(config.vision_config, dtype=dtype).to(device)
    fp = hashlib.sha256(f"random:{spec}:seed={seed}".encode()).hexdigest()[:16]
    return Encoder(vision, pixel_config(None, vision.config, arch["family"]), name=f"random:{spec}",
                   family=arch["family"], source=None, full_config=config, device=device, dtype=dtype,
                   fingerprint=fp, compile=compile)

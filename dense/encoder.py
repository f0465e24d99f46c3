"""The one place that builds SigLIP / SigLIP 2 vision towers, loads their weights (strictly) and runs them.

Two checkpoint families, both through transformers' own classes:

- ``siglip`` (fixed resolution, e.g. ``google/siglip2-so400m-patch14-384``): ``SiglipVisionModel`` with
  ``interpolate_pos_encoding=True`` (bicubic resize of the position grid to the image's own grid);
- ``siglip2`` (NaFlex, e.g. ``google/siglip2-so400m-patch16-naflex``): ``Siglip2VisionModel`` fed channel-last patches,
  ``spatial_shapes`` and an attention mask.

Only the vision tower is loaded for feature extraction; the text tower, tokenizer and ``logit_scale``/``logit_bias``
load the first time text is needed (:meth:`Encoder.text_parts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm.auto import tqdm

from dense.batching import Prepared, default_num_workers, forward_tower, plan_batches, prepared_stream
from dense.features import FeatureMap, block_indices
from dense.preprocess import ImageError, ImageInput, PixelConfig, choose_grid, load_image, to_pixels

log = logging.getLogger("dense")

# Names that resolve to folders shipped inside the package.
BUNDLED = {"shapes-tiny": "checkpoints/shapes-tiny",  # sigmoid loss only
           "shapes-tiny-v2": "checkpoints/shapes-tiny-v2"}  # + a per-patch loss: dense alignment, used by the demo
CALIBRATION_FILE = "dense_calibration.json"  # a checkpoint's measured defaults, beside its weights

_SO400M_TEXT = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    vocab_size=256000, max_position_embeddings=64)
_SO400M_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)

# Architectures that ``random_encoder`` can build: family + transformers config kwargs (a plain registry, as in SAM).
RANDOM_SPECS = {
    "so400m-patch14-384": dict(family="siglip", vision={**_SO400M_VISION, "patch_size": 14, "image_size": 384},
                               text=_SO400M_TEXT),
    "so400m-patch16-naflex": dict(family="siglip2", vision={**_SO400M_VISION, "patch_size": 16, "num_patches": 256},
                                  text=_SO400M_TEXT),
    # A few-layer model of the same families, for tests of code paths that need no trained weights.
    "tiny-siglip": dict(family="siglip", text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, vocab_size=64, max_position_embeddings=8,
                                                   pad_token_id=1, bos_token_id=2, eos_token_id=3),
                        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    patch_size=8, image_size=64)),
    "tiny-siglip2": dict(family="siglip2", text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, vocab_size=64, max_position_embeddings=8,
                                                     pad_token_id=1, bos_token_id=2, eos_token_id=3),
                         vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     patch_size=8, num_patches=64)),
}


class CheckpointError(OSError):
    """A checkpoint could not be found or loaded; the message says which and what to do."""


def _classes(family: str):
    import transformers as tf

    if family == "siglip":
        return tf.SiglipConfig, tf.SiglipVisionModel, tf.SiglipTextModel, tf.SiglipVisionConfig
    return tf.Siglip2Config, tf.Siglip2VisionModel, tf.Siglip2TextModel, tf.Siglip2VisionConfig


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a table of unexpected keys; we check them ourselves (strictly), so hide it."""
    from transformers.utils import logging as tf_logging

    old = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()  # "Loading weights" bars, one per tower
    try:
        yield
    finally:
        tf_logging.set_verbosity(old)
        if bars:
            tf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------------
# Resolving a name to a folder


def _hub_reachable(timeout_s: float = 1.5) -> bool:
    """Can we open a TCP connection to the hub within ``timeout_s`` (DNS included)?"""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(ok)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """A bundled name, a local folder or a hub id -> something ``from_pretrained`` can load without long retries.

    A hub id already in the local cache resolves to its snapshot folder. One that is not cached is returned as is when
    the hub answers; with ``HF_HUB_OFFLINE`` set or no network it fails at once with :class:`CheckpointError`.
    """
    name = str(name_or_path)
    if name in BUNDLED:
        folder = Path(__file__).parent / BUNDLED[name]
        if not (folder / "config.json").exists():
            raise CheckpointError(f"bundled checkpoint {name!r} is missing from the package ({folder})")
        return str(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path}: folder has no config.json; expected a save_pretrained() checkpoint")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name!r} is neither a checkpoint folder nor a hub id like 'google/siglip2-so400m-"
                              f"patch14-384' (bundled: {', '.join(BUNDLED)})")
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not in the cache (LocalEntryNotFoundError) or a broken cache entry
        pass
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached (no network)"
        raise CheckpointError(
            f"{name!r} is not in the local Hugging Face cache and {why}. Pass a local folder saved with "
            f"save_pretrained(), or download it first where there is network "
            f"(`hf download {name}`) and copy the cache (HF_HOME) here.")
    return name


def _read_json(folder: str, filename: str) -> dict:
    """A JSON file of a local folder or hub id (through transformers' cache), or {} when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(folder, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return {}
    if path is None:
        return {}
    return json.loads(Path(path).read_text())


def _read_tensors(folder: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Named tensors straight from a checkpoint's safetensors file(s), without building the model."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    index = _read_json(folder, "model.safetensors.index.json")
    names = list(names)
    files = {n: index["weight_map"][n] for n in names if n in index.get("weight_map", {})} if index else {}
    out = {}
    for n in names:
        path = cached_file(folder, files.get(n, "model.safetensors"))
        with safe_open(path, framework="pt") as f:
            if n not in f.keys():
                raise CheckpointError(f"{folder}: checkpoint has no tensor {n!r}")
            out[n] = f.get_tensor(n)
    return out


def _load_strict(cls, folder: str, *, allowed_prefixes: tuple[str, ...], **kwargs):
    """``cls.from_pretrained`` that fails on any missing, mismatched or unexpected key outside ``allowed_prefixes``."""
    with _quiet_transformers():
        model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(allowed_prefixes)]
    problems = {"missing": list(info["missing_keys"]), "unexpected": unexpected,
                "mismatched": [str(m) for m in info["mismatched_keys"]]}
    if any(problems.values()):
        detail = "; ".join(f"{k}: {v[:6]}{' ...' if len(v) > 6 else ''}" for k, v in problems.items() if v)
        raise CheckpointError(
            f"{folder}: weights do not match {cls.__name__} ({detail}). The folder probably holds another architecture "
            f"or a damaged file; dense loads strictly so that a half-loaded model never gives silent garbage.")
    return model


# ---------------------------------------------------------------------------------------------------------------------
# What a checkpoint is (its fingerprint) and how it was calibrated


@dataclass(frozen=True)
class Calibration:
    """A checkpoint's measured defaults for dense tasks, read from ``dense_calibration.json`` beside its weights.

    A checkpoint without the file gets these neutral defaults, tuned on nothing: the MAP head's value path
    (MaskCLIP's trick, which needs only the last block), SigLIP's own sigmoid at 0.5 as the background threshold,
    half the heatmap's range for boxes, queries embedded verbatim, the checkpoint's trained token budget, and a
    ``found_threshold`` of 0, so that an uncalibrated checkpoint never answers "not found" (SigLIP's sigmoid often puts
    even a matching pair well below 0.5, so an unmeasured threshold would hide real answers; every figure still shows
    the score).
    """

    method: str = "map-value-mlp"  # heatmap method (dense.heatmap.METHODS)
    background: float | None = 0.5  # segment(): probability below which a pixel is background (None: argmax only)
    box_threshold: float = 0.5  # localize(): relative heatmap threshold in [0, 1] for the box without candidates
    found_threshold: float = 0.0  # localize(): a score below this is "not found" (Localization.found); 0 = never
    templates: tuple[str, ...] = ("{}",)  # prompt templates, one "{}" each; ("{}",) = verbatim
    max_patches: int | None = None  # token budget for dense tasks; None = the checkpoint's trained count
    source: str = field(default="neutral defaults", compare=False)  # where the values came from

    def __post_init__(self):
        if not 0.0 <= self.found_threshold <= 1.0:
            raise CheckpointError(f"{self.source}: found_threshold is a probability in [0, 1], got "
                                  f"{self.found_threshold}")

    @classmethod
    def from_dict(cls, data: dict, source: str) -> Calibration:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known - {"measured", "comment"})
        if unknown:
            raise CheckpointError(f"{source}: unknown calibration keys {unknown}; expected some of {sorted(known)}")
        kw = {k: v for k, v in data.items() if k in known}
        if "templates" in kw:
            kw["templates"] = tuple(kw["templates"])
        return cls(**kw, source=source)


def _read_calibration(source: str | None) -> Calibration:
    data = _read_json(source, CALIBRATION_FILE) if source else {}
    return Calibration.from_dict(data, f"{source}/{CALIBRATION_FILE}") if data else Calibration()


def _calibration(given, source: str | None) -> Calibration:
    if given is None:
        return _read_calibration(source)
    if isinstance(given, Calibration):
        return given
    if isinstance(given, dict):
        return Calibration.from_dict(given, "calibration=")
    return Calibration.from_dict(json.loads(Path(given).read_text()), str(given))


_HASH_MEMO = "file-hashes.json"  # realpath|size|mtime_ns -> sha256, so a local checkpoint is hashed once per machine


def _memo_path() -> Path:
    root = os.environ.get("DENSE_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dense"
    return Path(root) / _HASH_MEMO


def _file_sha256(path: str) -> str:
    """The sha256 of a weight file. Files in the Hugging Face cache are named by their hash already (blobs/<sha>);
    others are hashed once and remembered by (path, size, mtime)."""
    real = os.path.realpath(path)
    if Path(real).parent.name == "blobs" and len(Path(real).name) in (40, 64):
        return Path(real).name
    st = os.stat(real)
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    memo[key] = h.hexdigest()
    with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
        from dense._atomic import write_json

        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo_file, memo)
    return memo[key]


def fingerprint(source: str) -> str:
    """What identifies a checkpoint's weights: sha256 over its ``config.json`` and its weight files' hashes.

    The same weights reached as a bundled name, a folder, a folder with a trailing slash or a hub id give one
    fingerprint; weights retrained into the same folder give another.
    """
    from transformers.utils import cached_file

    index = _read_json(source, "model.safetensors.index.json")
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    h = hashlib.sha256()
    h.update(json.dumps(_read_json(source, "config.json"), sort_keys=True).encode())
    for name in files:
        h.update(name.encode())
        h.update(_file_sha256(cached_file(source, name)).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# The encoder


@dataclass(frozen=True)
class TextParts:
    """What text needs: the text tower, its tokenizer (None for random encoders) and the sigmoid calibration."""

    model: torch.nn.Module
    tokenizer: object | None
    logit_scale: torch.Tensor  # scalar, log of the temperature (probabilities use exp(logit_scale))
    logit_bias: torch.Tensor  # scalar
    max_length: int  # the text length the checkpoint was trained with (64 for So400m)


class Encoder:
    """A SigLIP / SigLIP 2 vision tower that turns images into :class:`~dense.FeatureMap` s.

    Build it with :func:`load_encoder` or :func:`random_encoder`. ``extract`` one image, or ``extract_many`` for a
    stream, batched by grid.
    """

    def __init__(self, vision: torch.nn.Module, pixels: PixelConfig, *, name: str, family: str, source: str | None,
                 full_config, device: torch.device, dtype: torch.dtype, fingerprint: str,
                 calibration: Calibration | None = None):
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

        The weights are identified by :attr:`fingerprint`, not by the name typed to load them.
        """
        return {"fingerprint": self.fingerprint, "family": self.family, "patch_size": self.patch_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "max_patches": int(max_patches or self.pixels.max_patches),
                "layers": list(block_indices(layers, self.num_layers)),
                "dtype": str(self.dtype).removeprefix("torch.")}

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, family={self.family}, patch_size={self.patch_size}, "
                f"hidden={self.hidden_size}, layers={self.num_layers}, max_patches={self.pixels.max_patches}, "
                f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})")

    # --- pixels -> tokens -------------------------------------------------------------------------------------------
    def _block_index(self, layer: int) -> int:
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
        blocks = [self._block_index(i) for i in layers]
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and len(pixels) > 1:
            # bf16 on CPU (AMX): one image per pass is fastest. Measured on 2 AMX cores, So400m at 713 tokens:
            # 0.61-0.66 s/img one at a time, 0.65 in pairs, 0.73-0.75 in fours (bigger GEMMs add oneDNN copies).
            return [t for px in pixels for t in self.forward_batch([px], layers)]
        return forward_tower(self.vision, self.family, pixels, blocks, device=self.device, dtype=self.dtype,
                             non_blocking=self.device.type == "cuda")

    def prepare(self, image: ImageInput, max_patches: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """Read an image and choose its grid: ``(uint8 [H, W, 3], (gh, gw))``."""
        rgb = load_image(image)
        return rgb, choose_grid(rgb.shape[:2], self.patch_size, int(max_patches or self.pixels.max_patches))

    def _feature_map(self, tokens: torch.Tensor, image_hw, grid_hw, max_patches, layers) -> FeatureMap:
        gh, gw = grid_hw
        p = self.patch_size
        return FeatureMap(tokens=tokens, image_hw=tuple(int(v) for v in image_hw), resized_hw=(gh * p, gw * p),
                          patch_size=p, layers=tuple(self._block_index(i) for i in layers),
                          encoder=self.spec(max_patches=max_patches, layers=layers))

    def extract(self, image: ImageInput, *, max_patches: int | None = None, layers: tuple[int, ...] = (-1,)
                ) -> FeatureMap:
        """One image (path, PIL image or uint8 ``[H, W, 3]``) -> :class:`FeatureMap` at its native aspect ratio."""
        rgb, grid_hw = self.prepare(image, max_patches)
        pixels = to_pixels(rgb, grid_hw, self.pixels)[None]  # [1, 3, gh*p, gw*p]
        tokens = self.forward_pixels(pixels, layers)[0]  # [gh, gw, D*L]
        return self._feature_map(tokens, rgb.shape[:2], grid_hw, max_patches, layers)

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
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = len(images) if hasattr(images, "__len__") else None
        if num_workers is None:
            num_workers = default_num_workers(self.device, total)
        window = int(window or 8 * batch_size)
        max_patches = int(max_patches or self.pixels.max_patches)
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
                results[ok[k].index] = self._feature_map(t, ok[k].image_hw, ok[k].grid_hw, max_patches, layers)
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
        _, _, text_cls, _ = _classes(self.family)
        max_length = self.full_config.text_config.max_position_embeddings
        if self.source is None:  # random weights: same architecture, no tokenizer
            model = text_cls(self.full_config.text_config)
            scale, bias = torch.tensor(np.log(10.0)), torch.tensor(-10.0)
            tokenizer = None
        else:
            model = _load_strict(text_cls, self.source, allowed_prefixes=("vision_model.", "logit_"),
                                 dtype=self.dtype, attn_implementation=self.vision.config._attn_implementation)
            logits = _read_tensors(self.source, ["logit_scale", "logit_bias"])
            scale, bias = logits["logit_scale"].float().reshape(()), logits["logit_bias"].float().reshape(())
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.source)
        model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        return TextParts(model=model, tokenizer=tokenizer, logit_scale=scale, logit_bias=bias, max_length=max_length)


def _pixel_config(source: str | None, vision_config, family: str) -> PixelConfig:
    """The checkpoint's patch size, default token budget and normalization."""
    p = vision_config.patch_size
    pre = _read_json(source, "preprocessor_config.json") if source else {}
    if family == "siglip":
        max_patches = (vision_config.image_size // p) ** 2
    else:
        max_patches = int(pre.get("max_num_patches", vision_config.num_patches))
    from PIL import Image

    return PixelConfig(patch_size=p, max_patches=max_patches,
                       mean=tuple(pre.get("image_mean", (0.5, 0.5, 0.5))),
                       std=tuple(pre.get("image_std", (0.5, 0.5, 0.5))),
                       resample=int(pre.get("resample", Image.Resampling.BILINEAR)))


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def _native_bf16(device: torch.device) -> bool:
    """Does ``device`` run bfloat16 matmuls in hardware (CUDA compute capability >= 8; CPUs with AMX or AVX512-BF16)?"""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence getattr
        return any(bool(getattr(torch.cpu, n, lambda: False)()) for n in names)
    return False


def _default_dtype(dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` (or None) -> bfloat16 where ``device`` runs it natively, else float32; names -> torch dtypes.

    bfloat16 is ~3.5x faster than float32 for So400m on an AMX Xeon and ~1.6x on GPUs, but several times slower on CPUs
    without bf16 instructions (emulated); float16 runs at ~1 GFLOP/s on CPUs, so it is refused there.
    """
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if _native_bf16(device) else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use 'auto', {', '.join(repr(k) for k in _DTYPES)} or a torch dtype")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype float16 on a CPU device: CPUs run float16 matmuls at ~1 GFLOP/s (emulated). Use "
                         "dtype='auto' (bfloat16 where the CPU has AMX/AVX512-BF16, else float32), 'bf16' or 'fp32'.")
    return dtype


def load_encoder(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = "auto", attn_implementation: str = "sdpa",
                 calibration: Calibration | dict | str | os.PathLike | None = None) -> Encoder:
    """Load a SigLIP / SigLIP 2 vision tower for dense features.

    Args:
        name_or_path: a hub id (``google/siglip2-so400m-patch14-384``, ``google/siglip2-so400m-patch16-naflex``),
            a local ``save_pretrained`` folder (a full ``SiglipModel``/``Siglip2Model`` or a vision tower alone), or a
            bundled name (``"shapes-tiny"``, ``"shapes-tiny-v2"``).
        device: where the model runs; features always come back on the CPU as float32.
        dtype: weights and activations. ``"auto"`` (default; ``None`` means the same): bfloat16 on GPUs of compute
            capability 8+ and on CPUs with native bf16 (AMX or AVX512-BF16), float32 otherwise. bfloat16 is ~1.6x
            faster on GPUs and ~3.5x on an AMX Xeon, but several times SLOWER (7x on an AVX2 EPYC) on CPUs without
            bf16 instructions; float16 on a CPU is refused. ``"fp32"`` for bit-stable features. The chosen dtype is
            in ``repr(encoder)`` and ``encoder.spec()``.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
        calibration: the defaults dense tasks use (heatmap method, thresholds, templates, token budget; see
            :class:`Calibration`). None reads ``dense_calibration.json`` beside the weights, or neutral defaults
            when there is none; a dict, a JSON file or a :class:`Calibration` overrides it.

    Loading is strict: a missing, mismatched or unexpected weight (other than the text tower's, which loads only when
    text is first needed) raises :class:`CheckpointError`.
    """
    from transformers import AutoConfig

    source = resolve_checkpoint(name_or_path)
    dtype = _default_dtype(dtype, device)
    with _quiet_transformers():  # SiglipConfig builds a default text config first and warns about its token ids
        config = AutoConfig.from_pretrained(source)
    family = {"siglip": "siglip", "siglip_vision_model": "siglip", "siglip2": "siglip2",
              "siglip2_vision_model": "siglip2"}.get(config.model_type)
    if family is None:
        raise CheckpointError(f"{name_or_path}: model_type {config.model_type!r} is not SigLIP or SigLIP 2")
    full_cls, vision_cls, _, _ = _classes(family)
    vision = _load_strict(vision_cls, source, allowed_prefixes=("text_model.", "logit_"), dtype=dtype,
                          attn_implementation=attn_implementation).to(device)
    full_config = config if isinstance(config, full_cls) else None
    calibration = _calibration(calibration, source)
    pixels = _pixel_config(source, vision.config, family)
    if calibration.max_patches:
        pixels = replace(pixels, max_patches=int(calibration.max_patches))
    return Encoder(vision, pixels, name=str(name_or_path), family=family,
                   source=source if full_config is not None else None, full_config=full_config,
                   device=torch.device(device), dtype=dtype, fingerprint=fingerprint(source), calibration=calibration)


def random_encoder(spec: str = "so400m-patch14-384", *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | str | None = "auto", attn_implementation: str = "sdpa",
                   seed: int = 0) -> Encoder:
    """RANDOM WEIGHTS, for benchmarks and tests only: the exact architecture of ``spec`` (see ``RANDOM_SPECS``).

    Speed and memory do not depend on weight values, so ``random_encoder("so400m-patch14-384")`` times So400m
    without downloading it. Its features mean nothing.
    """
    if spec not in RANDOM_SPECS:
        raise ValueError(f"unknown spec {spec!r}; choose one of {sorted(RANDOM_SPECS)}")
    arch = RANDOM_SPECS[spec]
    full_cls, vision_cls, _, _ = _classes(arch["family"])
    config = full_cls(text_config=arch["text"], vision_config=arch["vision"])
    config.vision_config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    dtype = _default_dtype(dtype, device)
    torch.manual_seed(seed)
    vision = vision_cls(config.vision_config).to(device=device, dtype=dtype)
    fp = hashlib.sha256(f"random:{spec}:seed={seed}".encode()).hexdigest()[:16]
    return Encoder(vision, _pixel_config(None, vision.config, arch["family"]), name=f"random:{spec}",
                   family=arch["family"], source=None, full_config=config, device=torch.device(device), dtype=dtype,
                   fingerprint=fp)

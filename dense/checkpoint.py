"""What a checkpoint is: resolving a name to a folder, strict loading, the fingerprint, the calibration beside it.

Two checkpoint families, both through transformers' own classes:

- ``siglip`` (fixed resolution, e.g. ``google/siglip2-so400m-patch14-384``): ``SiglipVisionModel``;
- ``siglip2`` (NaFlex, e.g. ``google/siglip2-so400m-patch16-naflex``): ``Siglip2VisionModel``.

Nothing here runs a model: :mod:`dense.encoder` builds the :class:`~dense.encoder.Encoder` from these pieces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

import torch

from dense.errors import CheckpointError, InputError
from dense.preprocess import PixelConfig, check_max_patches

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


def model_classes(family: str):
    import transformers as tf

    if family == "siglip":
        return tf.SiglipConfig, tf.SiglipVisionModel, tf.SiglipTextModel, tf.SiglipVisionConfig
    return tf.Siglip2Config, tf.Siglip2VisionModel, tf.Siglip2TextModel, tf.Siglip2VisionConfig


@contextlib.contextmanager
def quiet_transformers():
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


def read_json(folder: str, filename: str) -> dict:
    """A JSON file of a local folder or hub id (through transformers' cache), or {} when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(folder, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return {}
    if path is None:
        return {}
    return load_json(path)


def load_json(path) -> dict:
    """A checkpoint's JSON file (or a calibration file) -> its value; one that is not valid JSON raises
    :class:`CheckpointError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def read_tensors(folder: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Named tensors straight from a checkpoint's safetensors file(s), without building the model."""
    from safetensors import SafetensorError, safe_open
    from transformers.utils import cached_file

    index = read_json(folder, "model.safetensors.index.json")
    names = list(names)
    files = {n: index["weight_map"][n] for n in names if n in index.get("weight_map", {})} if index else {}
    out = {}
    for n in names:
        path = cached_file(folder, files.get(n, "model.safetensors"))
        try:
            with safe_open(path, framework="pt") as f:
                if n not in f.keys():
                    raise CheckpointError(f"{folder}: checkpoint has no tensor {n!r}")
                out[n] = f.get_tensor(n)
        except SafetensorError as e:
            raise damaged(path, e) from e
    return out


def damaged(path, e: Exception) -> CheckpointError:
    """The error of a weights file safetensors cannot read (its own message names no file)."""
    return CheckpointError(f"{path}: a damaged or incomplete weights file ({e}); download or save it again")


def load_strict(cls, folder: str, *, allowed_prefixes: tuple[str, ...], **kwargs):
    """``cls.from_pretrained`` that fails on any missing, mismatched or unexpected key outside ``allowed_prefixes``."""
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    except SafetensorError as e:  # which file: the single one, or the folder of a sharded checkpoint
        single = Path(folder) / "model.safetensors"
        raise damaged(single if single.is_file() else folder, e) from e
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
    half the heatmap's range for boxes, queries embedded verbatim, the checkpoint's trained token budget, a guided
    filter of one patch cell computed exactly, both published distractor cues, and a ``found_threshold`` of 0, so that
    an uncalibrated checkpoint never answers "not found" (SigLIP's sigmoid often puts even a matching pair well below
    0.5, so an unmeasured threshold would hide real answers; every figure still shows the score).
    """

    method: str = "map-value-mlp"  # heatmap method (dense.heatmap.METHODS)
    background: float | None = 0.5  # segment(): probability below which a pixel is background (None: argmax only)
    box_threshold: float = 0.5  # localize(): relative heatmap threshold in [0, 1] for the box without candidates
    found_threshold: float = 0.0  # localize(): a score below this is "not found" (Localization.found); 0 = never
    templates: tuple[str, ...] = ("{}",)  # prompt templates, one "{}" each; ("{}",) = verbatim
    max_patches: int | None = None  # token budget for dense tasks; None = the checkpoint's trained count
    refine: str = "none"  # segment(): refinement of the scores with the image ('none', 'pamr': dense.refine)
    windows: int = 1  # segment(): n x n sliding windows, each at the token budget (1: the whole image at once)
    guided_radius_cells: float = 1.0  # dense.upsample sharpen="guided": filter radius in patch cells
    guided_subsample: int = 1  # (1, 2, ...): 1 = the exact guided filter; s = He's fast filter at 1/s resolution
    distractor_cues: tuple[str, ...] = ("norm", "isolation")  # '+filter' methods (dense.heatmap.DISTRACTOR_CUES)
    source: str = field(default="neutral defaults", compare=False)  # where the values came from

    def __post_init__(self):
        try:
            check_max_patches(self.max_patches)
        except InputError as e:
            raise CheckpointError(f"{self.source}: {e}") from None
        if not 0.0 <= self.found_threshold <= 1.0:
            raise CheckpointError(f"{self.source}: found_threshold is a probability in [0, 1], got "
                                  f"{self.found_threshold}")
        if not self.guided_radius_cells > 0:
            raise CheckpointError(f"{self.source}: guided_radius_cells must be > 0, got {self.guided_radius_cells}")
        if int(self.guided_subsample) != self.guided_subsample or self.guided_subsample < 1:
            raise CheckpointError(f"{self.source}: guided_subsample must be an integer >= 1, got "
                                  f"{self.guided_subsample}")

    @classmethod
    def from_dict(cls, data: dict, source: str) -> Calibration:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known - {"measured", "comment"})
        if unknown:
            raise CheckpointError(f"{source}: unknown calibration keys {unknown}; expected some of {sorted(known)}")
        kw = {k: v for k, v in data.items() if k in known}
        from dense.refine import REFINES

        if kw.get("refine", "none") not in REFINES:
            raise CheckpointError(f"{source}: refine must be one of {', '.join(REFINES)}, got {kw['refine']!r}")
        if not isinstance(kw.get("windows", 1), int) or kw.get("windows", 1) < 1:
            raise CheckpointError(f"{source}: windows must be a whole number >= 1, got {kw['windows']!r}")
        for key in ("templates", "distractor_cues"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw, source=source)


def _read_calibration_file(source: str | None) -> Calibration:
    data = read_json(source, CALIBRATION_FILE) if source else {}
    return Calibration.from_dict(data, f"{source}/{CALIBRATION_FILE}") if data else Calibration()


def read_calibration(given, source: str | None) -> Calibration:
    if given is None:
        return _read_calibration_file(source)
    if isinstance(given, Calibration):
        return given
    if isinstance(given, dict):
        return Calibration.from_dict(given, "calibration=")
    return Calibration.from_dict(load_json(given), str(given))


_HASH_MEMO = "file-hashes.json"  # realpath|size|mtime_ns -> sha256, so a local checkpoint is hashed once per machine

# Every file beside the weights that can change an output of dense: the config (architecture, text length, token ids),
# the preprocessor (normalisation, resample filter, NaFlex budget) and each file transformers' tokenizers may read.
# Not here, on purpose: dense_calibration.json. A calibration sets DEFAULTS (heatmap method, thresholds, templates,
# token budget), and each default that shapes a stored result is already in that result's own key: the budget in the
# feature spec (max_patches), the templates in the text-cache key, the method in a FeatureMap's aligned_method; the
# thresholds are applied at query time and never stored. Hashing it would re-extract every feature when a threshold
# is re-measured. training.json and READMEs describe, they change nothing.
IDENTITY_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "spiece.model",
                  "sentencepiece.bpe.model", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt")
_WEIGHT_INDEXES = (("model.safetensors.index.json", "model.safetensors"),
                   ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def dense_home() -> Path:
    """The root of dense's per-machine files: ``$DENSE_HOME``, else ``$XDG_CACHE_HOME/dense`` (``~/.cache/dense``)."""
    root = os.environ.get("DENSE_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dense"
    return Path(root)


def _hash_memo_path() -> Path:
    return dense_home() / _HASH_MEMO


def _file_sha256(path: str, memo: dict) -> str:
    """The sha256 of a file's bytes. Large files in the Hugging Face cache are named by it already (``blobs/<sha256>``;
    small ones are named by their git sha1, which is not it); others are hashed once and remembered in ``memo`` by
    (path, size, mtime)."""
    real = os.path.realpath(path)
    if Path(real).parent.name == "blobs" and len(Path(real).name) == 64:
        return Path(real).name
    st = os.stat(real)
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        memo[key] = h.hexdigest()
    return memo[key]


def _optional_file(source: str, name: str) -> str | None:
    """The local path of ``name`` in a folder or hub id (through transformers' cache), None when it has none."""
    from transformers.utils import cached_file

    try:
        return cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None


def identity_files(source: str) -> list[tuple[str, str]]:
    """``(name, local path)`` of every file :func:`fingerprint` hashes: the weights (all shards) and each of
    :data:`IDENTITY_FILES` the checkpoint has."""
    weights = []
    for index_name, single in _WEIGHT_INDEXES:
        index = read_json(source, index_name)
        names = sorted(set(index["weight_map"].values())) if index else [single]
        found = [(n, _optional_file(source, n)) for n in names]
        if all(path for _, path in found):
            weights = [(index_name, _optional_file(source, index_name))] if index else []
            weights += found
            break
    if not weights:
        raise CheckpointError(f"{source}: no weights (model.safetensors, its shards, or pytorch_model.bin)")
    extra = [(n, _optional_file(source, n)) for n in IDENTITY_FILES]
    return weights + [(n, path) for n, path in extra if path]


def fingerprint(source: str) -> str:
    """What identifies a checkpoint: sha256 over the names and contents of every file that changes an output of dense
    (the weights, config, preprocessor and tokenizer files: :func:`identity_files`; not the calibration, see
    :data:`IDENTITY_FILES`).

    The same files reached as a bundled name, a folder, a folder with a trailing slash, a copy elsewhere or a hub id
    give one fingerprint; retrained weights, another tokenizer or another preprocessor give another.
    """
    memo_file = _hash_memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    size = len(memo)
    h = hashlib.sha256()
    for name, path in identity_files(source):
        h.update(name.encode() + b"\0")
        h.update(_file_sha256(path, memo).encode())
    if len(memo) != size:
        with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
            from dense._atomic import write_json

            write_json(memo_file, memo)
    return h.hexdigest()[:16]


def pixel_config(source: str | None, vision_config, family: str) -> PixelConfig:
    """The checkpoint's patch size, default token budget and normalization."""
    p = vision_config.patch_size
    pre = read_json(source, "preprocessor_config.json") if source else {}
    if family == "siglip":
        max_patches = (vision_config.image_size // p) ** 2
    else:
        max_patches = int(pre.get("max_num_patches", vision_config.num_patches))
    from PIL import Image

    return PixelConfig(patch_size=p, max_patches=max_patches,
                       mean=tuple(pre.get("image_mean", (0.5, 0.5, 0.5))),
                       std=tuple(pre.get("image_std", (0.5, 0.5, 0.5))),
                       resample=int(pre.get("resample", Image.Resampling.BILINEAR)))

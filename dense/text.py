"""Text queries -> unit-normalized text embeddings ``[T, E]``, encoded exactly as SigLIP was trained, and cached.

How a query becomes token ids (:func:`tokenize`)
-----------------------------------------------
1. lower-case it (``str.lower``: SigLIP 2 was trained on lower-cased text; other scripts pass through unchanged);
2. tokenize WITHOUT special tokens (so no BOS, whatever the tokenizer's defaults);
3. keep at most ``max_length - 1`` tokens and append EOS ("sticky" EOS: a long query keeps its EOS);
4. pad on the RIGHT with the pad id to the checkpoint's text length (``TextParts.max_length``, 64 for So400m).

Right padding matters: the SigLIP text tower pools the LAST position whatever the attention mask says, and
transformers' Gemma/Siglip2 tokenizers pad on the left by default. No attention mask is passed (big_vision trained
without one), which is also what ``SiglipModel`` does with the ids its processor makes.

Templates
---------
``templates`` is a sequence of format strings with one ``{}``; a query's embedding is the normalized mean of its
normalized template embeddings (CLIP's prompt ensemble, in embedding space). ``templates=None`` uses the query
verbatim. The higher-level functions (``dense.classify``, ``dense.segment``, heatmaps, localization) pass the
checkpoint's calibrated templates (:class:`dense.checkpoint.Calibration`; verbatim when it has none).

Caches
------
Embeddings are cached per (encoder, query, templates) in a weak dictionary keyed by the encoder, so segmenting many
images with the same class names encodes each name once per process; and on disk, so they are encoded once per
machine (So400m's 27-layer text tower takes minutes on a CPU for ADE20K's 150 names x 5 templates). Disk entries live
under ``$DENSE_HOME/text-embeddings`` (default ``~/.cache/dense``, beside ``dense.encoder``'s file-hash memo), one
small ``.safetensors`` file per (checkpoint fingerprint, text-tower dtype, query, templates), written atomically
(temp + rename), so concurrent processes never read a half file and at worst both compute the same entry. An
encoder without a fingerprint, an explicit ``tokenizer=`` (it may change the ids) or ``DENSE_TEXT_CACHE=0`` skips the
disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("dense")

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Encoder -> {(query, templates): [E] tensor}
_CACHE_LIMIT = 100_000  # entries per encoder; cleared when full (queries are cheap to recompute)


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be strings, got {[type(t).__name__ for t in texts]}")
    return texts


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return ("{}",)
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty; pass None to use queries verbatim")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
    return templates


def tokenize(encoder, texts: str | Sequence[str], *, tokenizer=None) -> torch.Tensor:
    """Queries -> token ids ``[T, L]`` (int64): lower-cased, no BOS, EOS kept, right-padded to ``L = max_length``.

    ``tokenizer`` overrides the checkpoint's (any callable with transformers' ``__call__(texts,
    add_special_tokens=False)`` and ``eos_token_id``/``pad_token_id``); random encoders have none.
    """
    parts = encoder.text_parts()
    tok = tokenizer if tokenizer is not None else parts.tokenizer
    if tok is None:
        raise ValueError(f"{encoder.name}: this encoder has no tokenizer (random weights?); pass tokenizer=... or "
                         f"token ids to embed_token_ids")
    cfg = parts.model.config
    eos = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else cfg.eos_token_id
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else cfg.pad_token_id
    if eos is None or pad is None:
        raise ValueError(f"{encoder.name}: tokenizer and config define no EOS/pad id (eos={eos}, pad={pad})")
    L = parts.max_length
    texts = [t.lower() for t in _as_list(texts)]
    pieces = tok(texts, add_special_tokens=False)["input_ids"]
    ids = torch.full((len(texts), L), int(pad), dtype=torch.long)  # [T, L]
    for row, p in enumerate(pieces):
        p = list(p)[: L - 1] + [int(eos)]
        ids[row, : len(p)] = torch.tensor(p, dtype=torch.long)
    return ids


@torch.inference_mode()
def embed_token_ids(encoder, ids: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Token ids ``[T, L]`` (already padded as :func:`tokenize` does) -> unit-normalized embeddings ``[T, E]``.

    ``E`` is the text projection size (= the vision hidden size). float32, CPU.
    """
    parts = encoder.text_parts()
    if ids.ndim != 2 or ids.shape[1] != parts.max_length:
        raise ValueError(f"token ids must be [T, {parts.max_length}], got {tuple(ids.shape)}")
    out = []
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start:start + batch_size].to(parts.model.device)
        out.append(parts.model(input_ids=chunk).pooler_output.float().cpu())  # [b, E]
    return F.normalize(torch.cat(out), dim=-1)


def _cache_for(encoder) -> dict:
    cache = _CACHE.get(encoder)
    if cache is None or len(cache) > _CACHE_LIMIT:
        cache = _CACHE[encoder] = {}
    return cache


def embed_texts(encoder, texts: str | Sequence[str], *, templates: Sequence[str] | None = None,
                tokenizer=None) -> torch.Tensor:
    """Queries -> unit-normalized text embeddings ``[T, E]`` (float32, CPU), cached per (encoder, query, templates)
    in memory and on disk (see the module docstring).

    With ``templates``, each query is formatted with every template, embedded, and the normalized embeddings are
    averaged and re-normalized. ``templates=None`` embeds the queries verbatim.
    """
    texts = _as_list(texts)
    templates = _check_templates(templates)
    cache = _cache_for(encoder) if tokenizer is None else {}
    missing = [t for t in dict.fromkeys(texts) if (t, templates) not in cache]
    disk = disk_cache_dir(encoder) if tokenizer is None else None
    if missing and disk is not None:
        for t in missing:
            e = _disk_get(disk, t, templates)
            if e is not None:
                cache[(t, templates)] = e
        missing = [t for t in missing if (t, templates) not in cache]
    if missing:
        prompts = [tpl.format(t) for t in missing for tpl in templates]  # query-major: [len(missing) * K]
        emb = embed_token_ids(encoder, tokenize(encoder, prompts, tokenizer=tokenizer))  # [M*K, E]
        emb = emb.reshape(len(missing), len(templates), -1).mean(dim=1)  # [M*K, E] -> [M, K, E] -> [M, E]
        for t, e in zip(missing, F.normalize(emb, dim=-1), strict=True):
            cache[(t, templates)] = e
            if disk is not None:
                _disk_put(disk, t, templates, e)
    if not texts:
        return torch.zeros(0, encoder.text_parts().model.config.projection_size)
    return torch.stack([cache[(t, templates)] for t in texts])  # [T, E]


# ---------------------------------------------------------------------------------------------------------------------
# The disk cache


def disk_cache_dir(encoder) -> Path | None:
    """The folder of ``encoder``'s cached text embeddings (``$DENSE_HOME/text-embeddings/<fingerprint>-<dtype>``),
    or None when the disk cache is off (``DENSE_TEXT_CACHE=0``) or the encoder has no fingerprint."""
    fp = getattr(encoder, "fingerprint", None)
    if not fp or os.environ.get("DENSE_TEXT_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    from dense.checkpoint import dense_home

    dtype = str(getattr(encoder, "dtype", "")).removeprefix("torch.")  # the text tower runs in the encoder's dtype
    return dense_home() / "text-embeddings" / f"{fp}-{dtype}"


def _disk_path(folder: Path, text: str, templates: tuple[str, ...]) -> Path:
    key = hashlib.sha256(json.dumps([text, list(templates)]).encode()).hexdigest()[:32]
    return folder / key[:2] / f"{key}.safetensors"


def _disk_get(folder: Path, text: str, templates: tuple[str, ...]) -> torch.Tensor | None:
    from safetensors import safe_open

    path = _disk_path(folder, text, templates)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("key", "null")) != [text, list(templates)]:
                return None  # a hash collision: recompute (and overwrite)
            return f.get_tensor("embedding").float().clone()
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged file: recompute and overwrite it
        log.warning("text cache entry %s unreadable (%s); recomputing it", path, e)
        return None


def _disk_put(folder: Path, text: str, templates: tuple[str, ...], emb: torch.Tensor) -> None:
    from safetensors.torch import save_file

    from dense._atomic import atomic_path

    path = _disk_path(folder, text, templates)
    try:
        with atomic_path(path) as tmp:
            save_file({"embedding": emb.float().contiguous()}, str(tmp),
                      metadata={"key": json.dumps([text, list(templates)])})
    except OSError as e:  # a read-only home only costs recomputing next time
        log.warning("could not write the text cache entry %s: %s", path, e)


def put_cache(encoder, texts: Sequence[str], embeddings: torch.Tensor, *, templates: Sequence[str] | None = None
              ) -> None:
    """Seed the in-memory cache with precomputed unit embeddings ``[T, E]`` (e.g. class names embedded once and
    saved). The disk cache is left alone: it only holds what the text tower computed."""
    texts = _as_list(texts)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"{len(texts)} texts for embeddings of shape {tuple(embeddings.shape)}")
    cache = _cache_for(encoder)
    for t, e in zip(texts, F.normalize(embeddings.float(), dim=-1), strict=True):
        cache[(t, _check_templates(templates))] = e


def clear_cache(encoder=None) -> None:
    """Forget cached text embeddings (of one encoder, or all)."""
    if encoder is None:
        _CACHE.clear()
    else:
        _CACHE.pop(encoder, None)

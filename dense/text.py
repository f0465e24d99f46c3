"""Text queries -> unit-normalized text embeddings ``[T, E]``, tokenized as the references tokenize them, and cached.

Which references, exactly: for SigLIP 2, big_vision's zero-shot evaluator (``big_vision/evaluators/proj/image_text/
{prompt_engineering,discriminative_classifier}.py``: its published zero-shot figures) and OpenCLIP's SigLIP 2
tokenizers; no public source shows the text pipeline SigLIP 2 was *trained* with (big_vision's own SigLIP 2 demo
only lower-cases). For SigLIP v1, transformers' ``SiglipTokenizer``.

How a query becomes token ids (:func:`tokenize`)
-----------------------------------------------
1. canonicalize it by the checkpoint's rule (:func:`canonicalize`, :func:`text_rule`; below);
2. tokenize WITHOUT special tokens (so no BOS, whatever the tokenizer's defaults);
3. keep at most ``max_length - 1`` tokens and append EOS ("sticky" EOS: a long query keeps its EOS);
4. pad on the RIGHT with the pad id to the checkpoint's text length (``TextParts.max_length``, 64 for So400m).

Right padding matters: the SigLIP text tower pools the LAST position whatever the attention mask says, and
transformers' Gemma/Siglip2 tokenizers pad on the left by default. No attention mask is passed (big_vision trained
without one), which is also what ``SiglipModel`` does with the ids its processor makes.

Canonicalization: one rule per checkpoint
-----------------------------------------
:func:`text_rule` reads it from the checkpoint's tokenizer (its class, as ``tokenizer_config.json`` names it):

- ``"siglip2"`` (a Gemma tokenizer: ``GemmaTokenizer``, ``Siglip2Tokenizer``; every SigLIP 2 checkpoint, So400m
  included): big_vision's ``canonicalize_text`` (``big_vision/evaluators/proj/image_text/prompt_engineering.py``),
  step for step: ``_`` -> space, ASCII punctuation (``string.punctuation``) removed, ``str.lower``, runs of
  whitespace -> one space, stripped. big_vision's zero-shot evaluator applies this function to every class name
  (keeping commas, then keeping the first comma-separated alias: :func:`class_queries`) and to every template
  (keeping ``{}``), then formats; dense canonicalizes the formatted prompt whole, as OpenCLIP's SigLIP 2 tokenizers
  (``clean="canonicalize"``) do, which gives the same text for a canonical name in a template. transformers' hub
  tokenizer for SigLIP 2 does not canonicalize (at most it lower-cases), which RADIO's authors found costs
  zero-shot accuracy badly.
  OpenCLIP also runs ftfy's ``fix_text`` and ``html.unescape`` first (its own repair of web captions, for every
  model it wraps, CLIP's included); dense does not, so curly quotes, full-width forms and ``&amp;`` reach the
  tokenizer as typed, as in big_vision. Only ASCII punctuation goes: ``“quoted”`` keeps its curly quotes, ``café``
  its accent, Chinese/Arabic/Cyrillic text its letters (Cyrillic and other cased scripts are lower-cased).
- ``"siglip"`` (``SiglipTokenizer``: SigLIP v1's SentencePiece tokenizer): that tokenizer's own
  ``canonicalize_text`` (transformers ``models/siglip/tokenization_siglip.py``, run inside its ``_tokenize``):
  ``str.lower``, ASCII punctuation removed (``_`` too: ``hot_dog`` -> ``hotdog``), runs of whitespace -> one space,
  stripped. Applying it first changes nothing the tokenizer would not do (the rule is idempotent); it makes the
  rule visible and testable without the SentencePiece model.
- ``"lower"`` (any other tokenizer, e.g. the bundled ``shapes-tiny`` / ``shapes-tiny-v2``, whose word-level
  tokenizers lower-case and split on whitespace and punctuation): ``str.lower`` only, dense's rule before
  :data:`TEXT_RULES_VERSION` 2, so those checkpoints see exactly the ids they were trained and calibrated with.

The rule and :data:`TEXT_RULES_VERSION` are part of every text-cache key (memory and disk): an embedding computed
under another rule is never served.

Templates
---------
``templates`` is a sequence of format strings with one ``{}``; a query's embedding is the normalized mean of its
normalized template embeddings (CLIP's prompt ensemble, in embedding space). ``templates=None`` uses the query
verbatim. The higher-level functions (``dense.classify``, ``dense.segment``, heatmaps, localization) pass the
checkpoint's calibrated templates (:class:`dense.checkpoint.Calibration`; verbatim when it has none).

Caches
------
Embeddings are cached per (encoder, text rules, query, templates) in a weak dictionary keyed by the encoder, so
segmenting many images with the same class names encodes each name once per process; and on disk, so they are encoded
once per machine (So400m's 27-layer text tower takes minutes on a CPU for ADE20K's 150 names x 5 templates). Disk
entries live under ``$DENSE_HOME/text-embeddings`` (default ``~/.cache/dense``, beside ``dense.checkpoint``'s file-hash
memo), one small ``.safetensors`` file per (checkpoint fingerprint, text-tower dtype, text rules, query, templates),
written atomically (temp + rename), so concurrent processes never read a half file and at worst both compute the same
entry. An encoder without a fingerprint, an explicit ``tokenizer=`` (it may change the ids) or ``DENSE_TEXT_CACHE=0``
skips the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from dense.errors import InputError

log = logging.getLogger("dense")

# The version of dense's text rules (canonicalization, EOS, padding, template averaging) in every text-cache key and
# the disk cache's folder name. 1: lower-case only (dense <= 0.2); 2: the per-checkpoint rules of :func:`canonicalize`.
# tests/test_rules_version.py pins reference outputs of these rules to this number: a rule changed without a bump
# fails there.
TEXT_RULES_VERSION = 2
TEXT_RULES = ("siglip2", "siglip", "lower")  # see the module docstring

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Encoder -> {(rules, query, templates): [E]}
_CACHE_LIMIT = 100_000  # entries per encoder; cleared when full (queries are cheap to recompute)
_RULE_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Encoder -> its rule (read once)
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)  # what big_vision and transformers remove
_SPACES = re.compile(r"\s+")  # Unicode whitespace: the same characters as str.split() (checked over all of Unicode)


def canonicalize(text: str, rule: str) -> str:
    """``text`` as checkpoints of ``rule`` (one of :data:`TEXT_RULES`) were trained to read it (module docstring).

    >>> canonicalize("The man, in the RED shirt.", "siglip2")
    'the man in the red shirt'
    >>> canonicalize("hot_dog", "siglip2"), canonicalize("hot_dog", "siglip")
    ('hot dog', 'hotdog')
    """
    if rule == "siglip2":  # big_vision prompt_engineering.canonicalize_text
        text = text.replace("_", " ").translate(_ASCII_PUNCTUATION).lower()
        return _SPACES.sub(" ", text).strip()
    if rule == "siglip":  # transformers SiglipTokenizer.canonicalize_text with do_lower_case=True
        text = text.lower().translate(_ASCII_PUNCTUATION)
        return _SPACES.sub(" ", text).strip()
    if rule == "lower":
        return text.lower()
    raise InputError(f"unknown text rule {rule!r}; one of {TEXT_RULES}")


def class_queries(class_names: Sequence[str]) -> list[str]:
    """A dataset's class names -> the queries its evaluation embeds: each name's first comma-separated alias,
    stripped (``"building, edifice"`` -> ``"building"``), as big_vision's zero-shot evaluator does
    (``discriminative_classifier.py``, ``first_class_name_only=True``: ``name.split(",")[0]`` after canonicalizing
    with commas kept). ADE20K-847's names carry such aliases; a name without a comma is unchanged."""
    return [name.split(",")[0].strip() if "," in name else name for name in class_names]


def rule_of_tokenizer(tokenizer) -> str:
    """The rule of a tokenizer object, by its class (and the class its ``tokenizer_config.json`` names)."""
    names = [c.__name__ for c in type(tokenizer).__mro__]
    names.append(str((getattr(tokenizer, "init_kwargs", None) or {}).get("tokenizer_class") or ""))
    return _rule_of_class(*names)


def _rule_of_class(*names: str) -> str:
    names = [n.removesuffix("Fast") for n in names if n]
    if any(n.startswith(("Gemma", "Siglip2")) for n in names):  # SigLIP 2's tokenizer is Gemma's
        return "siglip2"
    if "SiglipTokenizer" in names:  # SigLIP v1's SentencePiece tokenizer
        return "siglip"
    return "lower"


def text_rule(encoder, tokenizer=None) -> str:
    """The canonicalization rule of ``encoder``'s checkpoint (or of an explicit ``tokenizer``), one of
    :data:`TEXT_RULES`.

    Read from the loaded tokenizer when the text side is loaded, else from ``tokenizer_config.json``'s
    ``tokenizer_class`` (the class ``AutoTokenizer`` builds), so a cached query needs no text tower. A checkpoint
    without a tokenizer (random weights: token ids only) gets ``"lower"``.
    """
    if tokenizer is not None:
        return rule_of_tokenizer(tokenizer)
    rule = _RULE_OF.get(encoder)
    if rule is None:
        rule = _rule_of_encoder(encoder)
        _RULE_OF[encoder] = rule
    return rule


def _rule_of_encoder(encoder) -> str:
    loaded = getattr(encoder, "_text", None)
    if loaded is not None and loaded.tokenizer is not None:
        return rule_of_tokenizer(loaded.tokenizer)
    source = getattr(encoder, "source", None)
    if source is None:
        return "lower"
    from dense.checkpoint import read_json

    name = read_json(source, "tokenizer_config.json").get("tokenizer_class")
    if name:
        return _rule_of_class(name)
    tok = encoder.text_parts().tokenizer  # no class named: the one AutoTokenizer chose
    return "lower" if tok is None else rule_of_tokenizer(tok)


def check_queries(queries: str | Sequence[str], what: str = "queries", *, at_least_one: bool = False) -> list[str]:
    """Text queries as a list: strings, none empty or blank (queries are never empty: the one rule, read by every
    path from a query to its embedding). ``at_least_one``: the list may not be empty either. ``what`` names the
    argument in the error."""
    if isinstance(queries, str):
        if not queries.strip():
            raise InputError(f"{what} is empty: give some text")
        return [queries]
    queries = list(queries)
    if not all(isinstance(t, str) for t in queries):
        raise TypeError(f"{what} must be strings, got {[type(t).__name__ for t in queries]}")
    if at_least_one and not queries:
        raise InputError(f"{what} is empty: give at least one text query")
    empty = [k for k, q in enumerate(queries) if not q.strip()]
    if empty:
        raise InputError(f"{what}[{empty[0]}] is an empty query: give some text")
    return queries


def _as_list(texts: str | Sequence[str]) -> list[str]:
    """Texts as a list of strings (the tokenizer's level: an empty text tokenizes; a query is checked above it)."""
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
        raise InputError("templates is empty; pass None to use queries verbatim")
    for t in templates:
        if t.count("{}") != 1:
            raise InputError(f"template {t!r} must contain exactly one '{{}}'")
    return templates


def tokenize(encoder, texts: str | Sequence[str], *, tokenizer=None) -> torch.Tensor:
    """Queries -> token ids ``[T, L]`` (int64): canonicalized by the checkpoint's rule (:func:`text_rule`), no BOS,
    EOS kept, right-padded to ``L = max_length``.

    ``tokenizer`` overrides the checkpoint's (any callable with transformers' ``__call__(texts,
    add_special_tokens=False)`` and ``eos_token_id``/``pad_token_id``); random encoders have none.
    """
    parts = encoder.text_parts()
    tok = tokenizer if tokenizer is not None else parts.tokenizer
    if tok is None:
        raise InputError(f"{encoder.name}: this encoder has no tokenizer (random weights?); pass tokenizer=... or "
                         f"token ids to embed_token_ids")
    cfg = parts.model.config
    eos = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else cfg.eos_token_id
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else cfg.pad_token_id
    if eos is None or pad is None:
        raise InputError(f"{encoder.name}: tokenizer and config define no EOS/pad id (eos={eos}, pad={pad})")
    L = parts.max_length
    rule = text_rule(encoder, tokenizer)
    texts = [canonicalize(t, rule) for t in _as_list(texts)]
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
        raise InputError(f"token ids must be [T, {parts.max_length}], got {tuple(ids.shape)}")
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


def rules_key(rule: str) -> str:
    """The text rules of a cache key: :data:`TEXT_RULES_VERSION` and the checkpoint's rule, e.g. ``"2/siglip2"``."""
    return f"{TEXT_RULES_VERSION}/{rule}"


def embed_texts(encoder, texts: str | Sequence[str], *, templates: Sequence[str] | None = None,
                tokenizer=None) -> torch.Tensor:
    """Queries -> unit-normalized text embeddings ``[T, E]`` (float32, CPU), cached per (encoder, text rules, query,
    templates) in memory and on disk (see the module docstring).

    With ``templates``, each query is formatted with every template, embedded, and the normalized embeddings are
    averaged and re-normalized. ``templates=None`` embeds the queries verbatim. Each formatted prompt is
    canonicalized whole (as OpenCLIP's tokenizer does), so ``"a photo of a {}."`` loses its full stop.
    """
    texts = check_queries(texts, "queries")  # never empty
    templates = _check_templates(templates)
    if tokenizer is None:
        cache, disk, rules = _cache_for(encoder), disk_cache_dir(encoder), rules_key(text_rule(encoder))
    else:  # an explicit tokenizer may change the ids: no cache
        cache, disk, rules = {}, None, ""
    missing = [t for t in dict.fromkeys(texts) if (rules, t, templates) not in cache]
    if missing and disk is not None:
        for t in missing:
            e = _disk_get(disk, rules, t, templates)
            if e is not None:
                cache[(rules, t, templates)] = e
        missing = [t for t in missing if (rules, t, templates) not in cache]
    if missing:
        prompts = [tpl.format(t) for t in missing for tpl in templates]  # query-major: [len(missing) * K]
        emb = embed_token_ids(encoder, tokenize(encoder, prompts, tokenizer=tokenizer))  # [M*K, E]
        emb = emb.reshape(len(missing), len(templates), -1).mean(dim=1)  # [M*K, E] -> [M, K, E] -> [M, E]
        for t, e in zip(missing, F.normalize(emb, dim=-1), strict=True):
            cache[(rules, t, templates)] = e
            if disk is not None:
                _disk_put(disk, rules, t, templates, e)
    if not texts:
        return torch.zeros(0, encoder.text_parts().model.config.projection_size)
    return torch.stack([cache[(rules, t, templates)] for t in texts])  # [T, E]


# ---------------------------------------------------------------------------------------------------------------------
# The disk cache



_DISK_FORMAT = "dense.TextEmbedding"  # one cached embedding (dense._atomic.save_tensors)
_DISK_VERSION = 1


def disk_cache_dir(encoder) -> Path | None:
    """The folder of ``encoder``'s cached text embeddings
    (``$DENSE_HOME/text-embeddings/v<TEXT_RULES_VERSION>/<fingerprint>-<dtype>``), or None when the disk cache is
    off (``DENSE_TEXT_CACHE=0``) or the encoder has no fingerprint. The fingerprint covers the tokenizer's files
    (:func:`dense.checkpoint.fingerprint`): another tokenizer is another folder."""
    fp = getattr(encoder, "fingerprint", None)
    if not fp or os.environ.get("DENSE_TEXT_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    from dense.checkpoint import dense_home

    dtype = str(getattr(encoder, "dtype", "")).removeprefix("torch.")  # the text tower runs in the encoder's dtype
    return dense_home() / "text-embeddings" / f"v{TEXT_RULES_VERSION}" / f"{fp}-{dtype}"


def _disk_key(rules: str, text: str, templates: tuple[str, ...]) -> str:
    return json.dumps([rules, text, list(templates)])


def _disk_path(folder: Path, rules: str, text: str, templates: tuple[str, ...]) -> Path:
    key = hashlib.sha256(_disk_key(rules, text, templates).encode()).hexdigest()[:32]
    return folder / key[:2] / f"{key}.safetensors"


def _disk_get(folder: Path, rules: str, text: str, templates: tuple[str, ...]) -> torch.Tensor | None:
    from dense._atomic import load_tensors

    path = _disk_path(folder, rules, text, templates)
    try:
        header, tensors = load_tensors(path, _DISK_FORMAT, _DISK_VERSION, "text embedding")
        if header.get("key") != _disk_key(rules, text, templates):
            return None  # a hash collision or another rule's entry: recompute (and overwrite)
        return tensors["embedding"].float()
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, OSError) as e:  # a damaged file: recompute and overwrite it
        log.warning("text cache entry %s unreadable (%s); recomputing it", path, e)
        return None


def _disk_put(folder: Path, rules: str, text: str, templates: tuple[str, ...], emb: torch.Tensor) -> None:
    from dense._atomic import save_tensors

    path = _disk_path(folder, rules, text, templates)
    try:
        save_tensors(path, {"embedding": emb.float()},
                     {"format": _DISK_FORMAT, "version": _DISK_VERSION, "key": _disk_key(rules, text, templates)})
    except OSError as e:  # a read-only home only costs recomputing next time
        log.warning("could not write the text cache entry %s: %s", path, e)


def put_cache(encoder, texts: Sequence[str], embeddings: torch.Tensor, *, templates: Sequence[str] | None = None
              ) -> None:
    """Seed the in-memory cache with precomputed unit embeddings ``[T, E]`` (e.g. class names embedded once and
    saved). The disk cache is left alone: it only holds what the text tower computed."""
    texts = _as_list(texts)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise InputError(f"{len(texts)} texts for embeddings of shape {tuple(embeddings.shape)}")
    cache = _cache_for(encoder)
    rules, templates = rules_key(text_rule(encoder)), _check_templates(templates)
    for t, e in zip(texts, F.normalize(embeddings.float(), dim=-1), strict=True):
        cache[(rules, t, templates)] = e


def clear_cache(encoder=None) -> None:
    """Forget cached text embeddings (of one encoder, or all)."""
    if encoder is None:
        _CACHE.clear()
        _RULE_OF.clear()
    else:
        _CACHE.pop(encoder, None)
        _RULE_OF.pop(encoder, None)

"""Text canonicalization per checkpoint (dense.text.canonicalize / text_rule): known answers on awkward strings for
SigLIP 2 (big_vision's canonicalize_text) and SigLIP v1 (its tokenizer's own rule), which checkpoint gets which rule,
and cache keys that never serve an embedding computed under another rule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dense
from dense import text
from dense.text import canonicalize

# (input, SigLIP 2 = big_vision canonicalize_text, SigLIP v1 = transformers SiglipTokenizer.canonicalize_text)
AWKWARD = [
    ("The man, in the RED shirt.", "the man in the red shirt", "the man in the red shirt"),
    ("t-shirt, don't, U.S.A.", "tshirt dont usa", "tshirt dont usa"),  # punctuation inside words: removed, not split
    ("hot_dog", "hot dog", "hotdog"),  # big_vision turns "_" into a space first; v1 drops it with the punctuation
    ("a__b _c_", "a b c", "ab c"),
    ("3.5 x 2,000 px (50%)", "35 x 2000 px 50", "35 x 2000 px 50"),  # digits stay
    ("  many   spaces\tand\nnewlines\r\n", "many spaces and newlines", "many spaces and newlines"),
    ("a\u00a0b\u3000c\u2009d", "a b c d", "a b c d"),  # Unicode spaces (no-break, ideographic, thin) collapse too
    ("“Quoted” ‘single’ «guillemets»", "“quoted” ‘single’ «guillemets»", "“quoted” ‘single’ «guillemets»"),
    ("Café CRÈME brûlée!", "café crème brûlée", "café crème brûlée"),  # accents stay; only ASCII punctuation goes
    ("红色的圆，在左边。", "红色的圆，在左边。", "红色的圆，在左边。"),  # full-width comma and stop are not ASCII
    ("دائرة حمراء!", "دائرة حمراء", "دائرة حمراء"),  # Arabic: the ASCII "!" is removed
    ("Красный КРУГ.", "красный круг", "красный круг"),  # Cyrillic is lower-cased
    ("\u0130stanbul", "i\u0307stanbul", "i\u0307stanbul"),  # Python's str.lower, as the references use
    ("...!?", "", ""),
    ("a photo of a {}.", "a photo of a", "a photo of a"),  # braces are punctuation: format templates first
]


@pytest.mark.parametrize("raw, v2, v1", AWKWARD)
def test_known_answers(raw, v2, v1):
    assert canonicalize(raw, "siglip2") == v2
    assert canonicalize(raw, "siglip") == v1
    assert canonicalize(raw, "lower") == raw.lower()
    for rule in ("siglip2", "siglip"):  # idempotent: a tokenizer that canonicalizes again changes nothing
        assert canonicalize(canonicalize(raw, rule), rule) == canonicalize(raw, rule)


@pytest.mark.parametrize("raw, want", [  # big_vision's own prompt_engineering_test.py cases (no kept string)
    ("test_test", "test test"), ("test___test", "test test"), ("test", "test"), ("test.", "test"),
    (" test ", "test"), ("test\ntest", "test test"), ("test  test", "test test"), ("test {}", "test")])
def test_siglip2_rule_passes_big_visions_own_cases(raw, want):
    assert canonicalize(raw, "siglip2") == want


def test_siglip_v1_rule_matches_transformers_tokenizer():
    """Parity with transformers' SiglipTokenizer.canonicalize_text (needs sentencepiece to import the module)."""
    pytest.importorskip("sentencepiece")
    from transformers.models.siglip.tokenization_siglip import SiglipTokenizer

    fake = SimpleNamespace(do_lower_case=True, remove_punctuation=lambda t: SiglipTokenizer.remove_punctuation(None, t))
    for raw, _, _ in AWKWARD:
        assert canonicalize(raw, "siglip") == SiglipTokenizer.canonicalize_text(fake, raw)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown text rule 'clip'"):
        canonicalize("a", "clip")


# ---------------------------------------------------------------------------------------------------------------------
# Which checkpoint gets which rule

CHARS = "abcdefghijklmnopqrstuvwxyz"


def gemma_tokenizer(cls_name: str = "GemmaTokenizer"):
    """A character-level Gemma-style tokenizer (transformers' own class) over ``a-z`` and ``▁``: upper case and
    punctuation map to ``<unk>``, as unseen pieces would."""
    import transformers as tf

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    vocab.update({c: 6 + i for i, c in enumerate(CHARS)})
    return getattr(tf, cls_name)(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    """A tiny full SiglipModel whose tokenizer is a Gemma tokenizer, like google/siglip2-so400m-patch14-384."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("tiny-gemma")
    torch.manual_seed(0)
    text_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=6 + len(CHARS), max_position_embeddings=32, pad_token_id=0, eos_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8,
                  image_size=32)
    tf.SiglipModel(tf.SiglipConfig(text_config=text_cfg, vision_config=vision)).save_pretrained(folder)
    tf.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    gemma_tokenizer().save_pretrained(folder)
    return folder


def test_gemma_checkpoint_is_canonicalized_before_tokenizing(gemma_dir):
    enc = dense.load_encoder(gemma_dir, dtype="fp32")
    assert text.text_rule(enc) == "siglip2" and enc._text is None  # read from tokenizer_config.json, tower not loaded
    raw = "The man, in the RED shirt."
    ids = text.tokenize(enc, [raw, "the man in the red shirt"])
    tok = enc.text_parts().tokenizer
    want = tok(["the man in the red shirt"], add_special_tokens=False)["input_ids"][0] + [tok.eos_token_id]
    assert ids[0].tolist()[:len(want)] == want and ids[0].tolist()[len(want):] == [0] * (32 - len(want))
    assert torch.equal(ids[0], ids[1])
    assert 3 not in ids[0].tolist()  # no <unk>: neither capitals nor punctuation reached the tokenizer
    # lower-casing alone (the rule before TEXT_RULES_VERSION 2) gives other ids: the comma and stop stay
    lowered = tok([raw.lower()], add_special_tokens=False)["input_ids"][0]
    assert 3 in lowered


def test_rule_is_read_from_the_tokenizer(tiny_encoder):
    assert text.rule_of_tokenizer(gemma_tokenizer("GemmaTokenizer")) == "siglip2"
    assert text.rule_of_tokenizer(gemma_tokenizer("Siglip2Tokenizer")) == "siglip2"  # NaFlex checkpoints' class
    assert text.rule_of_tokenizer(tiny_encoder.text_parts().tokenizer) == "lower"  # word-level: dense's old rule
    assert text.text_rule(dense.random_encoder("tiny-siglip")) == "lower"  # no tokenizer: token ids only


def test_siglip_v1_tokenizer_class_gets_its_own_rule(tiny_siglip_dir, tmp_path):
    """SigLIP v1's tokenizer (SentencePiece, not loadable here) is recognized from tokenizer_config.json alone."""
    import shutil

    folder = Path(shutil.copytree(tiny_siglip_dir, tmp_path / "v1"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "SiglipTokenizer"}))
    enc = dense.load_encoder(folder, dtype="fp32")
    assert text.text_rule(enc) == "siglip" and enc._text is None


@pytest.mark.parametrize("name", ["shapes-tiny", "shapes-tiny-v2"])
def test_bundled_checkpoints_keep_their_ids(name):
    """The bundled models lower-case only, as they were trained and calibrated: ids of punctuated queries are what
    lower-casing gives (the punctuation reaches their word-level tokenizer), not the canonical form's."""
    enc = dense.load_encoder(name, dtype="fp32")
    assert text.text_rule(enc) == "lower"
    tok = enc.text_parts().tokenizer
    for q in ("a photo of a red circle", "The big BLUE star, on the left."):
        want = tok([q.lower()], add_special_tokens=False)["input_ids"][0][:15] + [tok.eos_token_id]
        assert text.tokenize(enc, q)[0].tolist()[:len(want)] == want


# ---------------------------------------------------------------------------------------------------------------------
# Cache keys


def test_memory_entry_under_the_old_key_is_not_served(gemma_dir):
    enc = dense.load_encoder(gemma_dir, dtype="fp32")
    text.clear_cache(enc)
    fresh = text.embed_texts(enc, ["red shirt"])
    text.clear_cache(enc)
    sentinel = torch.nn.functional.normalize(torch.ones(fresh.shape[1]), dim=0)
    cache = text._cache_for(enc)
    cache[("red shirt", ("{}",))] = sentinel  # dense <= 0.2's memory key: (query, templates)
    cache[(f"{text.TEXT_RULES_VERSION}/lower", "red shirt", ("{}",))] = sentinel  # another rule's entry
    got = text.embed_texts(enc, ["red shirt"])
    torch.testing.assert_close(got, fresh)
    assert text.TEXT_RULES_VERSION == 2  # 1 was lower-casing only; bump it whenever a rule changes
    assert text.rules_key("siglip2") == "2/siglip2"


def test_disk_entry_under_the_old_rule_is_not_served(gemma_dir, tmp_path, monkeypatch):
    """An embedding a previous version left on disk (key without the text rules) is recomputed, not served; so is
    one whose key names another rule, even at the new path."""
    from safetensors.torch import save_file

    monkeypatch.setenv("DENSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DENSE_TEXT_CACHE", "1")
    enc = dense.load_encoder(gemma_dir, dtype="fp32")
    folder = text.disk_cache_dir(enc)
    query, templates = "The man, in the RED shirt.", ("{}",)
    monkeypatch.setenv("DENSE_TEXT_CACHE", "0")
    text.clear_cache(enc)
    fresh = text.embed_texts(enc, [query], templates=templates)[0]
    monkeypatch.setenv("DENSE_TEXT_CACHE", "1")
    sentinel = torch.nn.functional.normalize(torch.ones_like(fresh), dim=0)
    old_key = json.dumps([query, list(templates)])  # dense <= 0.2's disk key
    old_path = folder / (h := hashlib.sha256(old_key.encode()).hexdigest()[:32])[:2] / f"{h}.safetensors"
    old_path.parent.mkdir(parents=True)
    save_file({"embedding": sentinel}, str(old_path), metadata={"key": old_key})
    new_path = text._disk_path(folder, text.rules_key("siglip2"), query, templates)
    new_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embedding": sentinel}, str(new_path),
              metadata={"key": text._disk_key("1/lower", query, templates)})  # right path, another rule's key
    text.clear_cache(enc)
    got = text.embed_texts(enc, [query], templates=templates)[0]
    torch.testing.assert_close(got, fresh)
    text.clear_cache(enc)  # the entry was rewritten under the new key and is served from disk now
    monkeypatch.setattr(text, "embed_token_ids", lambda *a, **k: pytest.fail("disk cache not used"))
    torch.testing.assert_close(text.embed_texts(enc, [query], templates=templates)[0], fresh)


def test_class_queries_keep_the_first_alias_as_big_vision():
    """big_vision's zero-shot evaluator: canonicalize keeping commas, then ``name.split(",")[0]``."""
    from dense.segdata import ADE847_CLASSES
    from dense.text import class_queries

    assert class_queries(["building, edifice", "wall", "hot_dog, frankfurter", "a ,b"]) == [
        "building", "wall", "hot_dog", "a"]
    queries = class_queries(ADE847_CLASSES)
    assert len(queries) == 847 and not any("," in q for q in queries)
    assert queries[list(ADE847_CLASSES).index("building, edifice")] == "building"
    for name, q in zip(ADE847_CLASSES, queries, strict=True):  # the same as big_vision's order of operations
        assert canonicalize(q, "siglip2") == canonicalize(name.replace(",", "\0"), "siglip2").split("\0")[0].strip()


def test_the_openvocab_evaluator_embeds_each_class_names_first_alias(tmp_path):
    """Category names that carry aliases ("red circle, crimson disc") give exactly the figures of their first
    aliases; the whole names (aliases joined) would give others."""
    from dense.datasets import make_shapes
    from dense.eval.data import open_data
    from dense.eval.openvocab import evaluate_openvocab
    from dense.eval.settings import Bootstrap

    make_shapes(tmp_path / "w", 6, seed=31002, splits={"test": 1.0})
    data = json.loads((tmp_path / "w" / "annotations.json").read_text())

    def run(rename):
        d = json.loads(json.dumps(data))
        for c in d["categories"]:
            c["name"] = rename(c["name"])
        (tmp_path / "a.json").write_text(json.dumps(d))
        res = evaluate_openvocab(enc, open_data(ann=tmp_path / "a.json", images=tmp_path / "w" / "images"),
                                 split="test", bootstrap=Bootstrap(resamples=10))
        return {k: v for k, v in res.figures.items() if "/IoU/" not in k}  # per-class keys carry the names

    enc = dense.load_encoder("shapes-tiny-v2", compile=False)
    plain = run(lambda n: n)
    assert run(lambda n: f"{n}, thing number {len(n)}") == plain
    assert run(lambda n: f"{n} thing number {len(n)}") != plain

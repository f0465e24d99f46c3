"""Offline fixtures: tiny SigLIP / SigLIP 2 checkpoints built with save_pretrained and a tokenizers-made tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("DENSE_TEXT_CACHE", "0")  # no test reads text embeddings another run left on disk
# dense's default threads (OMP_NUM_THREADS when set, else the cores the machine's load leaves free), so that a loaded
# machine runs the suite no slower than a quiet one per core
from dense.device import set_threads  # noqa: E402

set_threads()

WORDS = ("a photo of the red green blue yellow circle square triangle star small big large left right top bottom "
         "cat dog on in with").split()


def make_tokenizer(max_length: int):
    """A word-level, lower-casing tokenizer trained with `tokenizers`, appending EOS, padding RIGHT to max_length."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                   model_max_length=max_length, padding_side="right")


def _text_config(max_length=8):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=len(WORDS) + 3, max_position_embeddings=max_length, pad_token_id=1, bos_token_id=None,
                eos_token_id=2)


def build_tiny_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a random tiny full model (vision + text + logit scale/bias) and its tokenizer to ``folder``."""
    import transformers as tf

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    if family == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=_text_config(), vision_config={**vision, "image_size": 64}))
        processor = tf.SiglipImageProcessorPil(size={"height": 64, "width": 64}, resample=2,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        config = tf.Siglip2Config(text_config=_text_config(), vision_config={**vision, "num_patches": 64})
        model = tf.Siglip2Model(config)
        processor = tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=64)
    with torch.no_grad():  # non-trivial calibration so parity tests can see it
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    make_tokenizer(8).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def dense_home(tmp_path_factory):
    """dense's per-machine caches (file hashes, text embeddings) go to a fresh folder, not the user's home."""
    import os

    old = os.environ.get("DENSE_HOME")
    os.environ["DENSE_HOME"] = str(tmp_path_factory.mktemp("dense-home"))
    yield
    if old is None:
        os.environ.pop("DENSE_HOME", None)
    else:
        os.environ["DENSE_HOME"] = old


@pytest.fixture
def one_thread():
    """One torch thread: these tests' ops are tiny, and on a busy 2-core machine two OpenMP threads spin-wait far
    longer than they compute."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-siglip"), "siglip")


@pytest.fixture(scope="session")
def tiny_siglip2_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-siglip2"), "siglip2")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_siglip_dir):
    import dense

    return dense.load_encoder(tiny_siglip_dir, dtype="fp32")


@pytest.fixture(scope="session")
def tiny_encoder2(tiny_siglip2_dir):
    import dense

    return dense.load_encoder(tiny_siglip2_dir, dtype="fp32")


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)

"""dense.text's disk cache: embeddings computed once per machine, keyed by fingerprint, dtype, query and templates."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

import dense
from dense import text


@pytest.fixture
def disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DENSE_TEXT_CACHE", "1")
    return tmp_path / "home" / "text-embeddings"


@pytest.fixture
def tiny_encoder(tiny_siglip_dir):
    return dense.load_encoder(tiny_siglip_dir, dtype="fp32")


def test_second_process_reads_the_disk(disk, tiny_encoder, monkeypatch):
    templates = ("{}", "a photo of a {}")
    text.clear_cache(tiny_encoder)
    first = text.embed_texts(tiny_encoder, ["red circle", "blue star"], templates=templates)
    files = sorted(disk.rglob("*.safetensors"))
    assert len(files) == 2 and files[0].parent.parent.name == f"{tiny_encoder.fingerprint}-float32"
    assert not list(disk.rglob("*.tmp"))
    text.clear_cache(tiny_encoder)  # a new process: nothing in memory
    monkeypatch.setattr(text, "embed_token_ids", lambda *a, **k: pytest.fail("disk cache not used"))
    again = text.embed_texts(tiny_encoder, ["blue star", "red circle"], templates=templates)
    torch.testing.assert_close(again, first[[1, 0]], rtol=0, atol=0)


def test_keys_separate_templates_and_checkpoints(disk, tiny_encoder, tiny_siglip2_dir):
    text.clear_cache(tiny_encoder)
    a = text.embed_texts(tiny_encoder, ["red circle"], templates=("{}",))
    b = text.embed_texts(tiny_encoder, ["red circle"], templates=("a photo of a {}",))
    assert not torch.allclose(a, b)
    other = dense.load_encoder(tiny_siglip2_dir, dtype="fp32")
    c = text.embed_texts(other, ["red circle"], templates=("{}",))
    assert not torch.allclose(a, c)
    assert len({p.parent.parent.name for p in disk.rglob("*.safetensors")}) == 2  # one folder per checkpoint
    # a damaged entry is recomputed and rewritten, never served
    for p in disk.rglob("*.safetensors"):
        p.write_bytes(b"garbage")
    text.clear_cache(tiny_encoder)
    torch.testing.assert_close(text.embed_texts(tiny_encoder, ["red circle"], templates=("{}",)), a)


def test_off_switch_and_explicit_tokenizer_skip_the_disk(disk, tiny_encoder, monkeypatch):
    text.clear_cache(tiny_encoder)
    text.embed_texts(tiny_encoder, ["red circle"], tokenizer=tiny_encoder.text_parts().tokenizer)
    assert not disk.exists()
    monkeypatch.setenv("DENSE_TEXT_CACHE", "0")
    text.embed_texts(tiny_encoder, ["blue star"])
    assert not disk.exists()


def _embed_in_child(folder, checkpoint, queue):
    import os

    os.environ["DENSE_HOME"], os.environ["DENSE_TEXT_CACHE"] = folder, "1"
    torch.set_num_threads(1)
    enc = dense.load_encoder(checkpoint)
    queue.put(text.embed_texts(enc, ["red circle", "green square", "blue star"]).numpy())


@pytest.mark.slow
def test_concurrent_processes_agree(disk, tiny_siglip_dir):
    """Two processes filling the same entries at once: both get the same answer and leave whole files only."""
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(2)]
    procs = [ctx.Process(target=_embed_in_child, args=(str(disk.parent), str(tiny_siglip_dir), q)) for q in queues]
    for p in procs:
        p.start()
    outs = [q.get(timeout=900) for q in queues]  # hang guards, not speed limits
    for p in procs:
        p.join(timeout=900)
        assert p.exitcode == 0
    # equal up to batch-composition rounding: a process that found some entries on disk embeds fewer prompts at once
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-6)
    assert len(list(disk.rglob("*.safetensors"))) == 3 and not list(disk.rglob("*.tmp"))

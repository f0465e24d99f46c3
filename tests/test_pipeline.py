"""The extraction pipeline: results leave per batch (not per packing group), and cache writes from a pool of threads
whose failure names the image and leaves no half file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense.cache import FeatureCache
from dense.errors import CacheWriteError
from dense.extract import extract_to_cache, folder_items

pytestmark = pytest.mark.usefixtures("one_thread")


def images(folder: Path, sizes_hw) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (h, w) in enumerate(sizes_hw):
        out.append(folder / f"a{k:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out[-1])
    return out


def counting(encoder, calls: list):
    original = encoder._forward

    def spy(pixels, layers):  # each batch the tower runs
        calls.append(len(pixels))
        return original(pixels, layers)

    return spy


def test_results_leave_after_their_batch_not_after_the_packing_group(tmp_path, tiny_encoder):
    # input 0 is the largest image, so it runs in the first batch (longest first): in input order it is complete
    # after ONE forward pass of the four the group needs
    paths = images(tmp_path, [(90, 90)] + [(30, 40)] * 7)
    calls: list[int] = []
    tiny_encoder._forward = counting(tiny_encoder, calls)
    try:
        ordered = tiny_encoder.extract_many(paths, batch_size=2, packing_group=8, progress=False)
        first = next(ordered)
        assert calls == [2]
        rest = list(ordered)
        assert calls == [2, 2, 2, 2]
        calls.clear()
        stream = tiny_encoder.extract_stream(paths, batch_size=2, packing_group=8, progress=False)
        got = [next(stream), next(stream)]
        assert calls == [2] and sorted(i for i, _ in got)[0] == 0  # a batch's two results before the next batch
        got += list(stream)
    finally:
        del tiny_encoder._forward
    assert sorted(i for i, _ in got) == list(range(8))
    for path, fmap in zip(paths, [first, *rest], strict=True):
        torch.testing.assert_close(fmap.tokens, tiny_encoder.extract(path).tokens, rtol=0, atol=1e-5)
    by_index = dict(got)
    torch.testing.assert_close(by_index[3].tokens, rest[2].tokens, rtol=0, atol=0)


def test_a_failed_write_names_the_image_and_leaves_no_half_file(tmp_path, tiny_encoder):
    paths = images(tmp_path / "img", [(30, 40)] * 6)
    (tmp_path / "img" / "sub").mkdir()
    paths[3] = paths[3].rename(tmp_path / "img" / "sub" / "a03.png")
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder)
    cache.init()
    (cache.entries / "sub").write_bytes(b"")  # a file where the entry's folder goes: its write fails
    with pytest.raises(CacheWriteError, match=r"sub/a03\.png: writing cache entry 'sub/a03\.png' failed"):
        extract_to_cache(tiny_encoder, folder_items(tmp_path / "img"), cache, batch_size=2, progress=False)
    assert not [p for p in cache.dir.rglob("*.tmp")]  # no temp file left
    assert cache.keys() and all(cache.get(key) is not None for key in cache.keys())  # what was written is whole


def test_read_ahead_keeps_order_and_errors_and_stops_when_closed(tmp_path, tiny_encoder):
    import threading

    from dense.batching import prepared_stream

    paths = images(tmp_path, [(30, 40), (50, 20), (40, 40)] * 3)
    plain = list(prepared_stream(paths, tiny_encoder.pixels, 64))
    ahead = list(prepared_stream(paths, tiny_encoder.pixels, 64, read_ahead=4))
    assert [p.index for p in ahead] == list(range(9))
    for a, b in zip(plain, ahead, strict=True):
        assert a.grid_hw == b.grid_hw and torch.equal(a.pixels, b.pixels)

    def broken():  # the caller's own iterable fails: raised in the caller's thread, after what came before
        yield from paths[:2]
        raise OSError("the listing failed")

    got = []
    with pytest.raises(OSError, match="the listing failed"):
        for p in prepared_stream(broken(), tiny_encoder.pixels, 64, read_ahead=4):
            got.append(p.index)
    assert got == [0, 1]
    stream = prepared_stream(iter(paths * 50), tiny_encoder.pixels, 64, read_ahead=2)
    next(stream)
    stream.close()  # stops the reading thread
    for t in threading.enumerate():
        if t.name == "dense-read-ahead":
            t.join(timeout=5)
            assert not t.is_alive()


def test_extract_many_holds_at_most_held_bytes_for_order(tmp_path, tiny_encoder, monkeypatch):
    """Input 0 has the fewest tokens (a 12 x 4 grid, the others 8 x 8), so it runs LAST within its packing group:
    with the default group (8 batches) it comes out after every batch; when a group's results would pass
    HELD_BYTES, the group shrinks to one batch and it comes out after the first."""
    import dense.encoder

    paths = images(tmp_path, [(90, 30)] + [(90, 90)] * 7)
    calls: list[int] = []
    tiny_encoder._forward = counting(tiny_encoder, calls)
    try:
        next(tiny_encoder.extract_many(paths, batch_size=2, progress=False))
        assert calls == [2, 2, 2, 2]
        calls.clear()
        monkeypatch.setattr(dense.encoder, "HELD_BYTES", 1)
        first = next(tiny_encoder.extract_many(paths, batch_size=2, progress=False))
        assert calls == [2]
    finally:
        del tiny_encoder._forward
    torch.testing.assert_close(first.tokens, tiny_encoder.extract(paths[0]).tokens, rtol=0, atol=1e-5)

"""Compute once, query many: open-vocabulary segmentation with 150 class names vs one extraction, So400m (random).

    python benchmarks/segment_150.py                    # 480x640 image, 729-token budget, fp32, 3 repeats
    python benchmarks/segment_150.py --dtype bf16 --repeats 5 --classes 150 --method map-value-mlp
    python benchmarks/segment_150.py --spec tiny-siglip --classes 5 --height 64 --width 96 --repeats 1   # smoke

``random_encoder("so400m-patch14-384")``: the exact So400m vision AND text towers with random weights (speed does not
depend on weight values). A random encoder has no tokenizer, so this script installs a stand-in: a whitespace
tokenizer hashing each word to an id of the 256,000-word vocabulary (``HashTokenizer``), put into the encoder's
``TextParts`` so that every dense code path (lower-casing, right padding to 64, EOS, templates, the text cache) runs
exactly as with the real Gemma tokenizer. Token ids are not the real ones; costs are (64 positions per prompt).

Timed, each the median of ``--repeats`` runs on one image:
- ``extract``: ``encoder.extract(image)`` (one vision forward at the native-aspect grid);
- ``text (once)``: embedding the class names with the default 5-template ensemble (150 x 5 prompts), cold cache;
  a one-off per class list, paid again only for new names. The 27-layer text tower at 64 positions costs about as
  much per prompt as a tenth of an extraction, so by default only ``--text-sample`` names are embedded and timed and
  the time is scaled linearly to all names (marked "extrapolated"); the other names' cache entries are seeded with
  random unit vectors (``dense.text.put_cache``), which the cached path cannot tell apart. ``--text-sample 0`` embeds
  them all;
- ``segment | fmap``: ``dense.segment(encoder, fmap, names)`` with cached text: aligned tokens (the method's few
  per-patch matmuls), one [N, E] x [E, 150] matmul, sigmoid, bilinear upsampling of 150 maps to the original size and
  the argmax;
- ``segment | image``: ``dense.segment(encoder, image, names)`` end to end with cached text (extraction included).
The ratio is ``segment | image`` / ``extract``. The CPU is shared with other jobs: treat the numbers as guides.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import zlib

import numpy as np
import torch

import dense
from dense import heatmap, text

# A five-prompt ensemble (the one bundled shapes-tiny's calibration uses): the text side's cost grows with its length
TEMPLATES = ("{}", "a photo of a {}", "a picture of a {}", "an image of a {}", "this is a {}")


class HashTokenizer:
    """Whitespace words -> ``3 + crc32(word) % (vocab - 3)``; ids 0/1 are pad/EOS. Stands in for a missing tokenizer."""

    pad_token_id = 0
    eos_token_id = 1

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, texts, add_special_tokens: bool = False):
        return {"input_ids": [[3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in t.split()] for t in texts]}


def class_names(n: int) -> list[str]:
    """``n`` distinct ADE-like names (two words each)."""
    a = ["wall", "floor", "tree", "ceiling", "road", "bed", "window", "grass", "cabinet", "sidewalk", "person", "earth",
         "door", "table", "mountain"]
    b = ["red", "old", "small", "wooden", "glass", "metal", "stone", "white", "dark", "green"]
    names = [f"{x} {y}" for y in b for x in a]
    if n > len(names):
        raise ValueError(f"at most {len(names)} names")
    return names[:n]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--method", default="map-value-mlp", choices=list(heatmap.METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text-sample", type=int, default=10, help="names to embed and time (0 = all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--spec", default="so400m-patch14-384", help="random architecture (tiny-siglip: a smoke run)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    enc = dense.random_encoder(args.spec, dtype=args.dtype)
    parts = enc.text_parts()
    enc._text = dataclasses.replace(parts, tokenizer=HashTokenizer(parts.model.config.vocab_size))  # see docstring
    names = class_names(args.classes)
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    layers = heatmap.required_layers(args.method)

    enc.extract(image, layers=layers)  # warm-up
    t_extract, fmap = timed(lambda: enc.extract(image, layers=layers), args.repeats)
    text.clear_cache(enc)
    k = len(names) if args.text_sample <= 0 else min(args.text_sample, len(names))
    t0 = time.perf_counter()
    text.embed_texts(enc, names[:k], templates=TEMPLATES)
    t_text = (time.perf_counter() - t0) * len(names) / k
    if k < len(names):
        g = torch.Generator().manual_seed(0)
        rest = torch.randn(len(names) - k, parts.model.config.projection_size, generator=g)
        text.put_cache(enc, names[k:], rest, templates=TEMPLATES)
    text_label = f"text, {args.classes} names (once)" + (f", extrapolated from {k}" if k < len(names) else "")
    seg = lambda x: dense.segment(enc, x, names, method=args.method, background=0.5)  # noqa: E731
    seg(fmap)  # warm-up
    t_seg_fmap, labels = timed(lambda: seg(fmap), args.repeats)
    t_aligned, _ = timed(lambda: heatmap.aligned_tokens(enc, fmap, args.method), args.repeats)
    t_seg_image, _ = timed(lambda: seg(image), args.repeats)

    gh, gw = fmap.grid_hw
    print(f"{args.spec} (random weights), {args.dtype}, image {args.height}x{args.width} -> grid {gh}x{gw} = "
          f"{gh * gw} tokens, {args.classes} classes x {len(TEMPLATES)} templates, method {args.method}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (shared CPU)")
    print(f"{'step':<48}{'seconds':>10}{'x extract':>11}")
    rows = [("extract (1 vision forward)", t_extract), (text_label, t_text),
            ("  aligned tokens (inside segment)", t_aligned), ("segment | fmap, cached text", t_seg_fmap),
            ("segment | image, cached text", t_seg_image)]
    for name, t in rows:
        print(f"{name:<48}{t:10.3f}{t / t_extract:11.3f}")
    print(f"ratio segment(image, {args.classes} names) / extract: measured end to end {t_seg_image / t_extract:.3f}, "
          f"as (extract + segment | fmap) / extract {(t_extract + t_seg_fmap) / t_extract:.3f}  "
          f"(labels {labels.shape})")


if __name__ == "__main__":
    main()

"""Peak extra memory of ``dense.segment`` with many class names on a large photo (So400m, random weights).

    python benchmarks/segment_memory.py                       # 150 names, 4000 x 3000 photo
    python benchmarks/segment_memory.py --classes 150 --height 3000 --width 4000 --unchunked   # also the old rule
    python benchmarks/segment_memory.py --spec tiny-siglip --classes 5 --height 64 --width 96 --unchunked  # smoke

The text embeddings are seeded with random unit vectors (``dense.text.put_cache``) so that the text tower is not
what is measured. The FeatureMap is extracted first; then ``segment(encoder, fmap, names)`` runs while a thread samples
the process RSS every 5 ms: "peak extra" is the highest RSS during the call minus the RSS before it. ``--unchunked``
also runs the previous rule (every class upsampled, then one argmax) for comparison: it needs
``(classes + 1) x H x W x 4`` bytes.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

from dense.device import rss_gib


def peak_during(fn) -> tuple[float, float, object]:
    """``(seconds, peak extra RSS GiB, result)`` of ``fn()``."""
    base, peak, done = rss_gib(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_gib())
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    done.set()
    t.join()
    return dt, max(peak[0], rss_gib()) - base, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unchunked", action="store_true", help="also run the old rule (needs classes x H x W x 4 B)")
    ap.add_argument("--spec", default="so400m-patch14-384", help="random architecture (dense.checkpoint.RANDOM_SPECS)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import dense
    from dense import heatmap, openvocab, text

    enc = dense.random_encoder(args.spec, dtype="bf16")
    names = [f"class {k}" for k in range(args.classes)]
    templates = heatmap.templates_of(enc, None)
    E = enc.text_parts().model.config.projection_size
    text.put_cache(enc, names, torch.randn(len(names), E, generator=torch.Generator().manual_seed(0)),
                   templates=templates)
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    fmap = heatmap.with_aligned(enc, image, None)
    del image
    seg = lambda: dense.segment(enc, fmap, names, background=0.5)  # noqa: E731
    dt, extra, labels = peak_during(seg)  # no warm-up: its freed memory could hide this call's peak
    print(f"{args.spec} (random), {args.classes} names, photo {args.height}x{args.width} -> grid {fmap.grid_hw}, "
          f"{args.threads} thread(s)")
    print(f"{'rule':<40}{'seconds':>9}{'peak extra RSS GiB':>20}")
    print(f"{'segment (chunked argmax)':<40}{dt:>9.2f}{extra:>20.3f}")
    print(f"  label map alone (int32): {labels.nbytes / 2**30:.3f} GiB; old rule would hold "
          f"{(args.classes + 1) * args.height * args.width * 4 / 2**30:.2f} GiB of upsampled scores")
    record = {"spec": args.spec, "dtype": str(enc.dtype).removeprefix("torch."), "classes": args.classes,
              "photo_hw": [args.height, args.width],
              "grid_hw": list(fmap.grid_hw), "chunked": {"seconds": dt, "peak_extra_gib": extra},
              "labels_gib": labels.nbytes / 2**30,
              "unchunked_bound_gib": (args.classes + 1) * args.height * args.width * 4 / 2**30}
    if args.unchunked:
        scores = heatmap.patch_scores(enc, fmap, names)
        dt2, extra2, old = peak_during(lambda: openvocab.labels_from_scores(heatmap.to_image(scores, fmap),
                                                                            len(names), 0.5))
        print(f"{'unchunked (upsample all, then argmax)':<40}{dt2:>9.2f}{extra2:>20.3f}")
        print(f"labels identical: {bool((old == labels).all())}")
        record["unchunked"] = {"seconds": dt2, "peak_extra_gib": extra2,
                               "labels_identical": bool((old == labels).all())}
    if args.json:
        from dense._atomic import write_json

        write_json(args.json, record, indent=2)


if __name__ == "__main__":
    main()

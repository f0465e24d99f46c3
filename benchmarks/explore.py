"""How fast `dense explore` answers: first view, PCA, click, query, expression and class list, over real HTTP.

    python benchmarks/explore.py              # shapes-tiny-v2 on 4 drawn scenes
    python benchmarks/explore.py --so400m     # also So400m/14 (random weights): first view and click

Each row times requests to a server started here (loopback, werkzeug's threaded server, the app `dense explore`
serves), from sending the request to having the whole JSON answer, overlays (PNG data URLs) included: what a page
waits for, minus drawing. ``first view`` is `/api/image` on an image not seen yet (its one extraction and aligned
tokens); ``PCA`` is `/api/pca` over every image (one basis shared by all, computed once per set); ``click`` is
`/api/similarity` from one patch to every image; ``query`` is `/api/heatmap` with one new text query (text embedding
included: the on-disk text cache is off) over every image; ``expression`` is `/api/localize` with a new expression;
``classes`` is `/api/segment` with four class names. So400m has random weights (`dense.random_encoder`): its answers
mean nothing, its time is the real model's; it has no tokenizer, so only first view, PCA and click are timed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

os.environ["DENSE_TEXT_CACHE"] = "0"  # time text embeddings, not a cache another run left

QUERIES = ["red circle", "blue star", "green square", "yellow triangle", "red star", "blue circle", "green triangle",
           "yellow square", "red square", "blue triangle", "green star", "yellow circle"]


def request(server, method: str, path: str, body: dict | None = None) -> tuple[float, dict]:
    """Seconds from sending to having read and parsed the answer, and the answer."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    data = None if body is None else json.dumps(body).encode()
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    res = conn.getresponse()
    answer = json.loads(res.read())
    dt = time.perf_counter() - t0
    conn.close()
    if res.status != 200:
        raise RuntimeError(f"{method} {path}: {res.status} {answer}")
    return dt, answer


def scenes(folder: Path, n: int, size_range: tuple[int, int], seed: int) -> list[str]:
    from dense.datasets import make_shapes

    make_shapes(folder / "world", n, seed=seed, size_range=size_range)
    images = folder / "images"
    (folder / "world" / "images").rename(images)
    return sorted(p.name for p in images.iterdir())


def time_model(encoder, label: str, folder: Path, names: list[str], *, text: bool, repeats: int) -> list[dict]:
    from dense.explore import Explorer, Server, create_app

    explorer = Explorer(encoder, folder)
    rows = []

    def row(action: str, times: list[float], note: str = "") -> None:
        ms = sorted(1000 * t for t in times)
        rows.append({"model": label, "action": action, "images": len(names), "n": len(ms),
                     "median_ms": statistics.median(ms), "max_ms": ms[-1], "note": note})

    with Server(create_app(explorer)).start() as server:
        first = [request(server, "GET", "/api/image?name=" + quote(n))[0] for n in names]
        grid = explorer.features(names[0]).grid_hw
        row("first view", first, f"extraction + aligned tokens, grid {grid[0]}x{grid[1]}")
        row("PCA", [request(server, "POST", "/api/pca", {"images": names})[0]], "one shared basis, every image")
        clicks = []
        for k in range(repeats):
            name = names[k % len(names)]
            H, W = explorer.features(name).image_hw
            body = {"image": name, "point_xy": [(0.1 + 0.8 * (k * 0.37 % 1)) * W, (0.1 + 0.8 * (k * 0.61 % 1)) * H],
                    "images": names}
            clicks.append(request(server, "POST", "/api/similarity", body)[0])
        row("click", clicks, "similarity to every image")
        if text:
            qs = [request(server, "POST", "/api/heatmap", {"queries": [q], "images": names})[0]
                  for q in QUERIES[:repeats]]
            row("query", qs, "one new text query, every image")
            again = [request(server, "POST", "/api/heatmap", {"queries": [q], "images": names})[0]
                     for q in QUERIES[:repeats]]
            row("query again", again, "the same queries, text embedding cached")
            ex = [request(server, "POST", "/api/localize", {"expression": f"the {q}", "images": names})[0]
                  for q in QUERIES[:repeats]]
            row("expression", ex, "one new expression, every image")
            seg = [request(server, "POST", "/api/segment", {"classes": QUERIES[k:k + 4], "images": names})[0]
                   for k in range(0, min(repeats, len(QUERIES) - 3))]
            row("classes", seg, "four class names, every image")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--so400m", action="store_true", help="also time So400m/14 (random weights)")
    ap.add_argument("--images", type=int, default=4, help="images in the folder")
    ap.add_argument("--repeats", type=int, default=10, help="clicks and queries per row")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    import torch

    import dense

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        names = scenes(tiny, args.images, (96, 320), seed=0)
        rows += time_model(dense.load_encoder("shapes-tiny-v2"), "shapes-tiny-v2", tiny / "images", names,
                           text=True, repeats=args.repeats)
        if args.so400m:
            big = Path(tmp) / "big"
            names = scenes(big, args.images, (480, 640), seed=1)
            enc = dense.random_encoder("so400m-patch14-384")
            rows += time_model(enc, f"So400m/14 random ({str(enc.dtype).removeprefix('torch.')})", big / "images",
                               names, text=False, repeats=args.repeats)

    from dense.device import cpu_model_and_flags

    print(f"CPU: {cpu_model_and_flags()[0]}, {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'model':<28} {'action':<12} {'images':>6} {'n':>3} {'median ms':>10} {'max ms':>8}  what")
    for r in rows:
        print(f"{r['model']:<28} {r['action']:<12} {r['images']:>6} {r['n']:>3} {r['median_ms']:>10.1f} "
              f"{r['max_ms']:>8.1f}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

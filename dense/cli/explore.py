"""``dense explore``: a local page to click through a folder of images (similarity, heatmaps, boxes, segments)."""

from __future__ import annotations

import sys

from dense.cli._args import (
    add_max_patches,
    add_method,
    add_model,
    add_runtime,
    at_least,
    command,
    existing,
    layers,
    opt,
)
from dense.errors import DenseError

DESCRIPTION = ("Serves a local page showing the images of --images at their own aspect ratios, with their PCA view. "
               "Click a patch: its similarity to every patch of every image. Type text queries: heatmaps. An "
               "expression: its box, point and score. A class list: a segmentation. Features are extracted once per "
               "image, on first view (and kept in --cache when given). Binds to 127.0.0.1 unless --host says "
               "otherwise; serves only the image files under the folder.")


def add(sub, parent) -> None:
    p = command(sub, "explore", parent, func=run, help="a local page to explore a folder of images interactively",
                description=DESCRIPTION)
    add_model(p)
    opt(p, "--images", "searched recursively", required=True, type=existing("folder"))
    opt(p, "--host", default="127.0.0.1")
    opt(p, "--port", type=at_least(0, 65535), default=0)
    opt(p, "--cache", "features survive restarts")
    opt(p, "--layers", "for similarity (default: the last block and what the heatmap method needs)", type=layers,
        metavar="BLOCKS")
    opt(p, "--max-images", "the first ones by name (0: all)", type=at_least(0), default=64)
    add_method(p)
    add_max_patches(p)
    add_runtime(p)


def run(args) -> int:
    from dense.cli._args import load
    from dense.explore.server import describe, is_loopback, make_server
    from dense.preprocess import image_files, no_images_error

    try:
        import flask  # noqa: F401
    except ImportError:
        raise DenseError("dense explore needs Flask: pip install 'dense[explore]'") from None
    if not image_files(args.images):  # before the model loads
        raise no_images_error(args.images)
    encoder = load(args)
    try:
        server, explorer = make_server(encoder, args.images, host=args.host, port=args.port, cache=args.cache,
                                       max_patches=args.max_patches, layers=args.layers, method=args.method,
                                       max_images=args.max_images or None)
    except OSError as e:
        raise DenseError(f"--host {args.host} --port {args.port}: cannot listen ({e.strerror or e})") from None
    if not is_loopback(server.host):
        print(f"dense explore: warning: listening on {server.host}, not loopback: anyone who can reach this machine "
              f"can see the images in {args.images}", file=sys.stderr)
    print(describe(server, explorer), flush=True)
    print("dense explore: Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()  # until Ctrl-C (werkzeug returns from it then)
    finally:
        server.close()
    print("dense explore: stopped", flush=True)
    return 0

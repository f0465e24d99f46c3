"""``dense upsampler train``: a light learned upsampler for one encoder, trained on its own tokens (no labels)."""

from __future__ import annotations

from dense.cli._args import (
    DenseError,
    add_max_patches,
    add_model,
    add_runtime,
    command,
    existing,
    group,
    load,
    parse_layers,
    write_json,
)


def add(sub, parent) -> None:
    _, actions = group(sub, "upsampler", parent, help="learned feature upsampler (train)")
    t = command(actions, "train", parent, func=run_train,
                help="train an upsampler on a folder of images: the encoder's own finer-grid tokens are the target")
    add_model(t)
    t.add_argument("--images", required=True, type=existing("folder"), help="image folder (no labels needed)")
    t.add_argument("--out", required=True, help="where to save it (.safetensors)")
    t.add_argument("--limit", type=int, default=None, help="first N images only")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--layers", default="-1", help="blocks whose tokens it learns to upsample")
    t.add_argument("--seed", type=int, default=0)
    add_max_patches(t)
    add_runtime(t)
    t.add_argument("--json", help="write the training record here")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train(args) -> int:
    from dense.extract import folder_items
    from dense.upsample import UpsamplerConfig, train_upsampler

    items = folder_items(args.images)[: args.limit]
    if not items:
        raise DenseError(f"{args.images}: no images found")
    enc = load(args)
    cfg = UpsamplerConfig(max_patches=args.max_patches or enc.pixels.max_patches, epochs=args.epochs, seed=args.seed)
    up = train_upsampler(enc, [p for _, p in items], cfg, layers=parse_layers(args.layers), progress=not args.quiet)
    print(f"trained on {len(items)} images in {up.meta['seconds']:.0f} s: loss {up.meta['loss'][-1]:.4f} "
          f"(bilinear {up.meta['bilinear_loss']:.4f})")
    print(f"saved {up.save(args.out)}")
    write_json(args.json, up.meta)
    return 0

"""``dense upsampler train``: a light learned upsampler for one encoder, trained on its own tokens (no labels)."""

from __future__ import annotations

from dense.cli._args import (
    add_json,
    add_max_patches,
    add_model,
    add_quiet,
    add_runtime,
    command,
    existing,
    finish,
    group,
    layers,
    load,
    opt,
    plural,
    positive_int,
    tensors_file,
    write_json,
)


def add(sub, parent) -> None:
    _, actions = group(sub, "upsampler", parent, help="learned feature upsampler (train)")
    t = command(actions, "train", parent, func=run_train,
                help="train an upsampler on a folder of images: the encoder's own finer-grid tokens are the target")
    add_model(t)
    opt(t, "--images", "no labels needed", required=True, type=existing("folder"))
    opt(t, "--out", "the upsampler (.safetensors)", required=True, type=tensors_file)
    opt(t, "--limit", type=positive_int)
    opt(t, "--epochs", type=positive_int, default=6)
    opt(t, "--layers", "those it learns to upsample", type=layers, default="-1", metavar="BLOCKS")
    opt(t, "--seed", "initialisation and batch order", type=int, default=0)
    add_max_patches(t)
    add_runtime(t)
    add_json(t, "the training record")
    add_quiet(t)


def run_train(args) -> int:
    from dense.extract import folder_items
    from dense.preprocess import no_images_error
    from dense.upsample import UpsamplerConfig, train_upsampler

    items = folder_items(args.images)[: args.limit]
    if not items:
        raise no_images_error(args.images)
    enc = load(args)
    cfg = UpsamplerConfig(max_patches=args.max_patches or enc.pixels.max_patches, epochs=args.epochs, seed=args.seed)
    up = train_upsampler(enc, [p for _, p in items], cfg, layers=args.layers, progress=not args.quiet)
    return finish(f"trained on {plural(len(items), 'image')} in {up.meta['seconds']:.0f} s: loss "
                  f"{up.meta['loss'][-1]:.4f} (bilinear {up.meta['bilinear_loss']:.4f})",
                  lambda: up.save(args.out), lambda: write_json(args.json, up.meta))

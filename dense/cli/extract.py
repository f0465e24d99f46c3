"""``dense extract``: fill the feature cache (resumable; under torchrun each rank takes a shard)."""

from __future__ import annotations

import os

from dense.cli._args import (
    DenseError,
    add_max_patches,
    add_model,
    add_runtime,
    command,
    existing,
    load,
    parse_layers,
)


def add(sub, parent) -> None:
    p = command(sub, "extract", parent, func=run, help="extract features of an image folder or a COCO file into the "
                "cache", description="Fill the feature cache (resumable, atomic; under torchrun each rank takes a "
                "shard).")
    add_model(p)
    p.add_argument("--images", required=True, type=existing("folder"), help="image folder")
    p.add_argument("--ann", type=existing("file"),
                   help="COCO instances file (keys = image ids); without it every image under --images")
    p.add_argument("--split", help="only images whose COCO entry has this 'split'")
    p.add_argument("--cache", required=True, help="cache root folder")
    add_max_patches(p)
    p.add_argument("--layers", default="-1", help="comma-separated block indices, -1 = last")
    add_runtime(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true", help="report unreadable images/annotations and go on")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from dense.cache import FeatureCache, dataset_items, dist_info, extract_to_cache, folder_items

    layers = parse_layers(args.layers)
    if args.ann:
        from dense.coco import load_coco

        ds = load_coco(args.ann, args.images, on_error="skip" if args.skip_bad else "raise")
        items = dataset_items(ds, args.split)
        if not items:
            raise DenseError(f"{args.ann}: no images in split {args.split!r} (splits: {sorted(ds.splits())})")
    else:
        if args.split:
            raise DenseError("--split needs --ann (a COCO file whose images carry a 'split' field)")
        items = folder_items(args.images)
        if not items:
            raise DenseError(f"{args.images}: no images found (looked for .jpg, .png, .bmp, .webp, .tif)")

    world = int(os.environ.get("WORLD_SIZE", 1))
    group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
            group = True
    rank, world = dist_info()
    if args.device.startswith("cuda") and world > 1:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        encoder = load(args)
        cache = FeatureCache.for_encoder(args.cache, encoder, max_patches=args.max_patches, layers=layers)
        report = extract_to_cache(encoder, items, cache, max_patches=args.max_patches, layers=layers,
                                  batch_size=args.batch_size, on_error="skip" if args.skip_bad else "raise",
                                  progress=not args.quiet)
        reports = [report]
        if world > 1:
            import torch.distributed as dist

            reports = [None] * world
            dist.all_gather_object(reports, report)
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        tot = {k: sum(getattr(r, k) for r in reports) for k in ("total", "extracted", "cached", "corrupt")}
        skipped = [s for r in reports for s in r.skipped]
        print(f"cache: {cache.dir}")
        print(f"{'images':>8} {'extracted':>10} {'already cached':>15} {'damaged, redone':>16} {'unreadable':>11} "
              f"{'ranks':>6}")
        print(f"{tot['total']:>8} {tot['extracted']:>10} {tot['cached']:>15} {tot['corrupt']:>16} {len(skipped):>11} "
              f"{world:>6}")
        for s in skipped:
            print(f"unreadable, skipped: {s}")
    return 0

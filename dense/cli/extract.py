"""``dense extract``: fill the feature cache (resumable; under torchrun each rank takes a shard)."""

from __future__ import annotations

from dense.cli._args import (
    DATASETS,
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
    p.add_argument("--images", type=existing("folder"), help="image folder")
    p.add_argument("--ann", type=existing("file"),
                   help="COCO instances file (keys = image ids); without it every image under --images")
    p.add_argument("--dataset", choices=DATASETS, help="a dataset by name, read from --root (see dense.segdata)")
    p.add_argument("--root", type=existing("folder"), help="the --dataset's root folder")
    p.add_argument("--split", help="only images of this split (COCO: the images' 'split' field)")
    p.add_argument("--cache", required=True, help="cache root folder")
    add_max_patches(p)
    p.add_argument("--layers", default="-1", help="comma-separated block indices, -1 = last")
    add_runtime(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-compile", action="store_true", help="plain transformers layers, never the compiled tower "
                   "(default: compiled where this machine's one-off measurement found it pays; see dense.compiled)")
    p.add_argument("--skip-bad", action="store_true", help="report unreadable images/annotations and go on")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from dense.cache import (
        FeatureCache,
        dataset_items,
        extract_to_cache,
        folder_items,
    )
    from dense.distributed import gather_reports, init_distributed, plan_distributed

    layers = parse_layers(args.layers)
    on_error = "skip" if args.skip_bad else "raise"
    if args.dataset:
        from dense.segdata import load_dataset

        if args.root is None or args.ann:
            raise DenseError("--dataset takes --root DIR (and no --ann/--images)")
        ds = load_dataset(args.dataset, args.root)
        items = dataset_items(ds, args.split)
        if not items:
            raise DenseError(f"{args.root}: no images in {args.dataset} split {args.split!r} "
                             f"(splits: {sorted(ds.splits())})")
    elif args.images is None:
        raise DenseError("give --images DIR [--ann FILE], or --dataset NAME --root DIR")
    elif args.ann:
        from dense.coco import load_coco

        ds = load_coco(args.ann, args.images, on_error=on_error)
        items = dataset_items(ds, args.split)
        if not items:
            raise DenseError(f"{args.ann}: no images in split {args.split!r} (splits: {sorted(ds.splits())})")
    else:
        if args.split:
            raise DenseError("--split needs --ann or --dataset")
        ds = args.images  # a folder: its own namespace
        items = folder_items(args.images)
        if not items:
            raise DenseError(f"{args.images}: no images found (looked for .jpg, .png, .bmp, .webp, .tif)")

    plan = plan_distributed(args.device)
    args.device = plan.device
    group = init_distributed(plan)  # the device first, then the (gloo) group
    try:
        encoder = load(args)
        if args.no_compile:
            encoder.compile = False
        cache = FeatureCache.for_encoder(args.cache, encoder, max_patches=args.max_patches, layers=layers,
                                         dataset=ds)
        report = extract_to_cache(encoder, items, cache, max_patches=args.max_patches, layers=layers,
                                  batch_size=args.batch_size, on_error=on_error, rank=plan.rank,
                                  world_size=plan.world_size, progress=not args.quiet)
        reports = gather_reports(report, plan)
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if plan.rank == 0:
        tot = {k: sum(getattr(r, k) for r in reports) for k in ("total", "extracted", "cached", "corrupt")}
        skipped = [s for r in reports for s in r.skipped]
        print(f"cache: {cache.entries}")
        print(f"{'images':>8} {'extracted':>10} {'already cached':>15} {'damaged, redone':>16} {'unreadable':>11} "
              f"{'ranks':>6}")
        print(f"{tot['total']:>8} {tot['extracted']:>10} {tot['cached']:>15} {tot['corrupt']:>16} {len(skipped):>11} "
              f"{plan.world_size:>6}")
        if skipped:
            print(f"{len(skipped)} unreadable image(s) skipped; each was named above as it was met")
    return 0

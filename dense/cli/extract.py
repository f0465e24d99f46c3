"""``dense extract``: fill the feature cache (resumable; under torchrun each rank takes a shard)."""

from __future__ import annotations

from dense.cli._args import (
    DenseError,
    add_dataset,
    add_json,
    add_max_patches,
    add_model,
    add_quiet,
    add_runtime,
    command,
    existing,
    layers,
    opt,
    positive_int,
    runtime,
    write_json,
)


def add(sub, parent) -> None:
    p = command(sub, "extract", parent, func=run, help="extract features of an image folder or a COCO file into the "
                "cache", description="Fill the feature cache (resumable, atomic; under torchrun each rank takes a "
                "shard).")
    add_model(p)
    opt(p, "--images", type=existing("folder"))
    opt(p, "--ann", "keys = image ids; without it every image under --images", type=existing("file"))
    add_dataset(p)
    opt(p, "--split", "default: every image")
    opt(p, "--cache", required=True)
    add_max_patches(p)
    opt(p, "--layers", type=layers, default="-1", metavar="BLOCKS")
    add_runtime(p)
    opt(p, "--batch-size", type=positive_int, default=8)
    opt(p, "--no-compile", action="store_true")
    opt(p, "--skip-bad", action="store_true")
    add_json(p, "what was extracted, cached and skipped")
    add_quiet(p)


def run(args) -> int:
    from dense.extract import dataset_items, fill_cache, folder_items

    blocks = args.layers
    on_error = "skip" if args.skip_bad else "raise"
    if args.dataset:
        from dense.segdata import load_dataset

        if args.root is None or args.ann:
            raise DenseError("--dataset takes --root DIR (and no --ann/--images)")
        ds = load_dataset(args.dataset, args.root)
        items = dataset_items(ds, args.split)
        if not items:
            raise DenseError(f"{args.root}: no images in {args.dataset} "
                             f"{'split ' + repr(args.split) if args.split else 'dataset'}; splits present: "
                             f"{', '.join(sorted(ds.splits())) or 'none'}")
    elif args.images is None:
        raise DenseError("give --images DIR [--ann FILE], or --dataset NAME --root DIR")
    elif args.ann:
        from dense.coco import load_coco

        ds = load_coco(args.ann, args.images, on_error=on_error)
        items = dataset_items(ds, args.split)
        if not items:
            raise DenseError(f"{args.ann}: no images in {'split ' + repr(args.split) if args.split else 'the file'}; "
                             f"splits present: {', '.join(sorted(ds.splits())) or 'none'}")
    else:
        if args.split:
            raise DenseError("--split needs --ann or --dataset")
        ds = args.images  # a folder: its own namespace
        items = folder_items(args.images)
        if not items:
            raise DenseError(f"{args.images}: no images found (looked for .jpg, .png, .bmp, .webp, .tif)")

    report = fill_cache(args.model, items, args.cache, layers=blocks, max_patches=args.max_patches,
                        batch_size=args.batch_size, on_error=on_error, dataset=ds, device=args.device,
                        dtype=runtime(args).get("dtype"), compile=False if args.no_compile else "auto",
                        progress=not args.quiet)
    if report.rank == 0:
        print(f"cache: {report.cache}")
        print(f"{'images':>8} {'extracted':>10} {'already cached':>15} {'damaged, redone':>16} {'unreadable':>11} "
              f"{'ranks':>6}")
        print(f"{report.total:>8} {report.extracted:>10} {report.cached:>15} {report.corrupt:>16} "
              f"{len(report.skipped):>11} {report.ranks:>6}")
        if report.skipped:
            print(f"{len(report.skipped)} unreadable image(s) skipped; each was named above as it was met")
        write_json(args.json, {"cache": report.cache, "spec": report.spec, "total": report.total,
                               "extracted": report.extracted, "cached": report.cached, "corrupt": report.corrupt,
                               "skipped": report.skipped, "ranks": report.ranks})
    return 0

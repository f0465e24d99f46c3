"""``dense extract``: fill the feature cache (resumable; under torchrun each rank takes a shard)."""

from __future__ import annotations

from dense.cli._args import (
    add_dataset,
    add_json,
    add_max_patches,
    add_model,
    add_quiet,
    add_runtime,
    command,
    existing,
    finish,
    layers,
    opt,
    plural,
    positive_int,
    runtime,
    write_json,
)
from dense.errors import DenseError


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
    from dense.cache import FeatureCache
    from dense.distributed import gather_reports, init_distributed, plan_distributed
    from dense.extract import dataset_items, extract_to_cache, folder_items

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
            from dense.preprocess import no_images_error

            raise no_images_error(args.images)

    plan = plan_distributed(args.device)
    group = init_distributed(plan)  # the device first, then the (gloo) group
    try:
        from dense.encoder import load_encoder

        encoder = load_encoder(args.model, **{**runtime(args), "device": plan.device},
                               compile=False if args.no_compile else "auto")
        cache = FeatureCache.for_encoder(args.cache, encoder, max_patches=args.max_patches, layers=blocks,
                                         dataset=ds)
        report = extract_to_cache(encoder, items, cache, max_patches=args.max_patches, layers=blocks,
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
        lines = [f"cache: {cache.entries}",
                 f"{'images':>8} {'extracted':>10} {'already cached':>15} {'damaged, redone':>16} {'unreadable':>11} "
                 f"{'ranks':>6}",
                 f"{tot['total']:>8} {tot['extracted']:>10} {tot['cached']:>15} {tot['corrupt']:>16} "
                 f"{len(skipped):>11} {plan.world_size:>6}"]
        if skipped:
            lines.append(f"{plural(len(skipped), 'unreadable image')} skipped; each was named above as it was met")
        finish("\n".join(lines), lambda: write_json(args.json, {"cache": str(cache.entries), "spec": cache.spec,
                                                                **tot, "skipped": skipped, "ranks": plan.world_size}))
    return 0

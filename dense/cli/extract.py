"""``dense extract``: fill the feature cache (resumable; under torchrun the ranks share the missing images): flags ->
:func:`dense.extract.fill_cache` -> a printed report."""

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
                "cache", description="Fill the feature cache (resumable, atomic; under torchrun the ranks share "
                "the images still missing).")
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
    from dense.eval.data import open_data
    from dense.extract import fill_cache

    blocks = args.layers
    on_error = "skip" if args.skip_bad else "raise"
    if args.dataset is None and args.images is None:
        raise DenseError("give --images DIR [--ann FILE], or --dataset NAME --root DIR")
    data = open_data(args.dataset, ann=args.ann, images=args.images, root=args.root, splits=[args.split],
                     on_error=on_error)  # checked before the model loads
    items = data.items(args.split)
    ds = data.folder if data.kind == "folder" else data.dataset(args.split)  # the cache's namespace
    report = fill_cache(args.model, items, args.cache, layers=blocks, max_patches=args.max_patches,
                        batch_size=args.batch_size, on_error=on_error, dataset=ds, device=args.device,
                        dtype=runtime(args).get("dtype"), compile=False if args.no_compile else "auto",
                        progress=not args.quiet)
    if report.rank == 0:
        lines = [f"cache: {report.cache}",
                 f"{'images':>8} {'extracted':>10} {'already cached':>15} {'damaged, redone':>16} {'unreadable':>11} "
                 f"{'ranks':>6}",
                 f"{report.total:>8} {report.extracted:>10} {report.cached:>15} {report.corrupt:>16} "
                 f"{len(report.skipped):>11} {report.ranks:>6}"]
        if report.skipped:
            lines.append(f"{plural(len(report.skipped), 'unreadable image')} skipped; each was named above as it "
                         "was met")
        finish("\n".join(lines), lambda: write_json(args.json, {
            "cache": report.cache, "spec": report.spec, "total": report.total, "extracted": report.extracted,
            "cached": report.cached, "corrupt": report.corrupt, "skipped": report.skipped, "ranks": report.ranks}))
    return 0

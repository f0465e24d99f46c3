"""``dense compile-check``: measure whether the compiled tower pays on this machine, and store the decision that
``compile="auto"`` follows (:func:`dense.compiled.check_compile`)."""

from __future__ import annotations

from dense.cli._args import (
    add_json,
    add_max_patches,
    add_model,
    add_runtime,
    command,
    finish,
    opt,
    positive_int,
    write_json,
)

DESCRIPTION = ("Times the first 2 blocks of the model's tower eagerly and compiled (inductor, static shapes, frozen "
               "weights; one compile of that slice first) at the token budget and --batch-size, prints the decision "
               "and what the check cost, and stores it in $DENSE_HOME/compile.json under this machine's key "
               "(processor or GPU, torch, threads, dtype, tower width). compile=\"auto\", the default of every "
               "command and of load_encoder, compiles only where that record says it pays; without it the tower runs "
               "eagerly. Delete the file to go back to eager.")


def add(sub, parent) -> None:
    p = command(sub, "compile-check", parent, func=run, description=DESCRIPTION,
                help="measure whether compiling the tower pays on this machine; store the decision")
    add_model(p)
    add_max_patches(p, "the budget timed (default: the checkpoint's)")
    opt(p, "--batch-size", "the batch timed (dense extract's default)", type=positive_int, default=8)
    add_runtime(p)
    add_json(p, "the record stored")


def run(args) -> int:
    from dense.cli._args import load
    from dense.compiled import PAYS, check_compile

    encoder = load(args)
    budget = args.max_patches or encoder.pixels.max_patches
    record = check_compile(encoder.vision, device=encoder.device, dtype=encoder.dtype, budget=budget,
                           batch_size=args.batch_size)
    decision = "ON" if record["compile"] else "OFF"
    lines = [f"compile-check: compiled tower {decision} for compile=\"auto\" on [{record['key']}]"]
    if "error" in record:
        lines.append(f"  the compiled tower failed to build here: {record['error']}")
    else:
        graphs = f", CUDA graphs {record['cudagraphs_s']:.4f} s" if "cudagraphs_s" in record else ""
        lines.append(f"  {record['blocks']} blocks at {record['tokens']} tokens, batch {record['batch_size']}, "
                     f"medians of {record['repeats']}: eager {record['eager_s']:.4f} s, compiled "
                     f"{record['compiled_s']:.4f} s (x{record['speedup']:.2f}; on from x{PAYS}){graphs}")
        lines.append(f"  first compiled call (builds the slice): {record['first_call_s']:.1f} s")
    lines.append(f"  this check took {record['cost_s']:.1f} s; stored in {record['path']} (delete it to go back to "
                 "eager)")
    return finish("\n".join(lines), lambda: write_json(args.json, record))

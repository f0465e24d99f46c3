"""How light `import dense` and `dense --help` are, against `import torch`: fresh processes, interleaved rounds.

    python benchmarks/import_time.py [--rounds 7]

Each round starts one fresh Python per statement below, in turn, and times it from start to exit (the interpreter's
own start-up included, so the baseline `pass` is printed too). The table gives the median seconds and each median
divided by `import torch`'s; `import dense` should stay well under 1.3x (it imports no torch at all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "pass": "pass",
    "import torch": "import torch",
    "import dense": "import dense",
    "import dense.errors": "import dense.errors",
    "dense --help (parser built)": "from dense.cli import build_parser; build_parser().format_help()",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    times: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    for _ in range(args.rounds):
        for name, code in STATEMENTS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            times[name].append(time.perf_counter() - t0)
    torch_s = statistics.median(times["import torch"])
    print(f"{'statement':<30}{'median s':>10}{'/ import torch':>16}   ({args.rounds} interleaved rounds)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<30}{med:>10.3f}{med / torch_s:>15.2f}x")


if __name__ == "__main__":
    main()

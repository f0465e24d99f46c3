"""What threads cost on this machine, as it is now: one short command with every core, with one thread, and with dense's
default (``dense.device.default_threads``: the cores other processes leave free).

    python benchmarks/threads.py                              # `dense demo` (the bundled model), 2 rounds
    python benchmarks/threads.py --rounds 3 -- heatmap IMG "a red circle" --model shapes-tiny-v2
    python benchmarks/threads.py --rounds 1 -- demo --n-images 12      # a smoke run
    python benchmarks/threads.py --timeout 300                # a collapsed setting shows as >300

Each run is a fresh process (``python -m dense.cli ...``) with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` removed from its environment, so that the setting under test is the only one; settings are
interleaved round by round, so that a change of the machine's load falls on all of them. Each row prints the
1-minute load average before its runs (``os.getloadavg``) and the threads the default chose just before (the same
rule, computed in this process). The outputs of the runs are not compared here: the command's own tests do that.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dense.device import cpu_model_and_flags, default_threads, usable_cores

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run(command: list[str], threads: int | None, work: Path, timeout: float | None) -> float:
    """Seconds of one fresh ``dense`` process; ``inf`` when it ran past ``timeout`` (stopped there)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    argv = [sys.executable, "-m", "dense.cli", *command, *([] if threads is None else ["--threads", str(threads)])]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return math.inf
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each setting, interleaved")
    ap.add_argument("--timeout", type=float, default=None, help="stop a run after this many seconds (shown as >T)")
    ap.add_argument("command", nargs="*", help="a dense command after `--` (default: demo --out OUT)")
    args = ap.parse_args()
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        command = args.command or ["demo"]
        settings = {f"every core (--threads {cores})": cores, "--threads 1": 1, "default": None}
        seconds: dict[str, list[float]] = {name: [] for name in settings}
        loads: dict[str, list[float]] = {name: [] for name in settings}
        chosen: list[int] = []
        for r in range(args.rounds):
            for name, threads in settings.items():
                loads[name].append(os.getloadavg()[0])
                if threads is None:  # the rule as the child will apply it: without the variables it would honour
                    saved = {k: os.environ.pop(k) for k in THREAD_ENV if k in os.environ}
                    chosen.append(default_threads())
                    os.environ.update(saved)
                cmd = command
                if command[0] == "demo" and "--out" not in command:  # a demo refuses an existing --out
                    cmd = [*command, "--out", str(work / f"demo-{r}-{threads}")]
                seconds[name].append(run(cmd, threads, work, args.timeout))
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model} [{' '.join(flags)}], {cores} usable cores; command: dense {' '.join(command)}; "
          f"{args.rounds} round(s), interleaved")
    print(f"{'setting':<28}{'threads':>8}{'median s':>10}{'runs s':>22}{'load before':>14}")
    base = statistics.median(seconds["--threads 1"])
    for name, threads in settings.items():
        n = str(threads) if threads is not None else "/".join(str(c) for c in sorted(set(chosen)))
        runs = " ".join(f"{s:.1f}" if math.isfinite(s) else f">{args.timeout:g}" for s in seconds[name])
        load = " ".join(f"{v:.1f}" for v in loads[name])
        med = statistics.median(seconds[name])
        med_text = f"{med:.1f}" if math.isfinite(med) else f">{args.timeout:g}"
        print(f"{name:<28}{n:>8}{med_text:>10}{runs:>22}{load:>14}")
    for name in settings:
        if name != "--threads 1":
            med = statistics.median(seconds[name])
            ratio = f"{med / base:.2f}" if math.isfinite(med) else f"> {args.timeout / base:.2f}"
            print(f"ratio {name} / --threads 1 (median seconds): {ratio}")


if __name__ == "__main__":
    main()

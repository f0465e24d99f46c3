"""SIGKILL ``dense extract`` many times at random moments while it writes, resume it, and count what is left.

    python scripts/kill_extract.py [--kills 20] [--images 200] [--seed 0] [--mode exec|fork] [--json out.json]

A folder of small images (made here, deterministic) is extracted with the bundled ``shapes-tiny-v2`` into a fresh
cache. Each round deletes a random half of the finished entries (so that every round has work), starts ``dense
extract`` and SIGKILLs it at an event, never after a time: every other round as soon as a temp file of the cache
appears (mid-write), the others once a random number of new entries has been written. A round whose run ends before
its event counts no kill, and rounds go on until ``--kills`` kills have landed, so a faster CPU only means more
rounds. Then the extraction is resumed to completion by a real ``dense extract`` process, and the script checks: no
temp file is left (in the cache or in ``DENSE_HOME``), every entry loads as a valid entry of the cache, and no entry
was ever found damaged (after any kill, or by the resume). Exit status 0 when all of that holds.

``--mode exec`` (default) starts each killed run as its own ``python -m dense.cli extract`` process: the real thing,
but each start pays Python's imports (seconds). ``--mode fork`` imports dense once here and forks a child per round
that runs ``dense.cli.main(["extract", ...])``: the same code from argument parsing to the last write, minus the
interpreter start, so 20 kills take seconds (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "shapes-tiny-v2"


def make_images(folder: Path, n: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(24, 72, size=2))
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / f"{k:04d}.png")


def entries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.safetensors") if not p.name.startswith(".")]


def strays(*folders: Path) -> list[Path]:
    """Every file that is neither an entry, a spec.json nor dense's file-hash memo: temp files of any writer."""
    keep = {"spec.json", "file-hashes.json"}
    return [p for f in folders if f.exists() for p in f.rglob("*")
            if p.is_file() and p.name not in keep and not (p.suffix == ".safetensors" and not p.name.startswith("."))]


def damaged(cache: Path) -> list[str]:
    """Entries that do not load (a torn or half-written file would show here)."""
    from dense.features import FeatureMap

    bad = []
    for p in entries(cache):
        try:
            fmap = FeatureMap.load(p)
            if not fmap.tokens.isfinite().all():
                bad.append(f"{p}: non-finite tokens")
        except Exception as e:  # any failure to load is what we count
            bad.append(f"{p}: {e}")
    return bad


def start_run(argv: list[str], mode: str) -> int:
    """Start one ``dense extract`` and return its pid."""
    if mode == "exec":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        return subprocess.Popen([sys.executable, "-m", "dense.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).pid
    pid = os.fork()
    if pid == 0:  # the child: dense extract, from argument parsing on
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            from dense.cli import main

            code = main(argv)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def temp_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".*") if p.name.endswith(".tmp")]


def wait_for_event(pid: int, cache: Path, *, entries_at_least: int | None, timeout_s: float = 600) -> str:
    """Poll until the event: a temp file exists in the cache (``entries_at_least`` None) or the cache holds that many
    entries. Returns "event", "ended" (the run ended first and was reaped) or "timeout" (a hung run, a safety net)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return "ended"
        if entries_at_least is None:
            if temp_files(cache):
                return "event"
        elif len(entries(cache)) >= entries_at_least:
            return "event"
        time.sleep(0.002)
    return "timeout"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=("exec", "fork"), default="exec")
    ap.add_argument("--max-rounds", type=int, default=400, help="give up after this many rounds (a run that never "
                    "reaches its event)")
    ap.add_argument("--work", help="working folder (default: a fresh temporary one)")
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="dense-kill-"))
    images, cache, home = work / "images", work / "cache", work / "home"
    os.environ["DENSE_HOME"] = str(home)  # the file-hash memo (and anything else dense keeps) goes here, and is checked
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    make_images(images, args.images, args.seed)
    argv = ["extract", "--model", MODEL, "--images", str(images), "--cache", str(cache), "--quiet"]
    if args.mode == "fork":
        import torch

        torch.set_num_threads(1)  # no OpenMP pool in this process before it forks (nor in the children)
        import dense.cache  # noqa: F401  (the children inherit every import; nothing here runs a torch op)
        import dense.cli  # noqa: F401
        import dense.encoder  # noqa: F401
        from dense.checkpoint import model_classes

        model_classes("siglip")  # transformers' SigLIP modules, imported lazily otherwise

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    kills = temps_seen = damaged_after_kills = 0
    rounds = 0
    while kills < args.kills and rounds < args.max_rounds:
        rounds += 1
        done = entries(cache)
        for p in rng.sample(done, len(done) // 2):  # keep work for this round
            p.unlink()
        before = len(entries(cache))
        mid_write = rounds % 2 == 1  # odd rounds: kill at the first temp file; even: after k new entries
        target = None if mid_write else before + rng.randint(1, max(1, (args.images - before) // 2))
        pid = start_run(argv, args.mode)
        state = wait_for_event(pid, cache, entries_at_least=target)
        if state != "ended":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills += state == "event"
        temps_seen += len(strays(cache))
        damaged_after_kills += len(damaged(cache))
    left_before_resume = len(strays(cache, home))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    resume = subprocess.run([sys.executable, "-m", "dense.cli", *argv], env=env, capture_output=True, text=True)
    redone = _redone(resume.stdout)
    left = strays(cache, home)
    bad = damaged(cache)
    valid = _valid_entries(cache, images)
    out = {"mode": args.mode, "kills": kills, "rounds": rounds, "images": args.images,
           "temp_files_seen_after_kills": temps_seen,
           "damaged_entries_after_kills": damaged_after_kills, "temp_files_before_resume": left_before_resume,
           "resume_exit": resume.returncode, "damaged_redone_by_resume": redone, "temp_files_after_resume": len(left),
           "damaged_after_resume": len(bad), "valid_entries": valid, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'kills':>6} {'temps seen':>11} {'temps left':>11} {'after resume':>13} {'damaged':>8} {'valid':>9} "
          f"{'s':>6}")
    print(f"{kills:>6} {temps_seen:>11} {left_before_resume:>11} {len(left):>13} "
          f"{damaged_after_kills + (redone or 0) + len(bad):>8} {valid:>4}/{args.images:<4} {out['seconds']:>6}")
    for p in left:
        print(f"left: {p}")
    for b in bad:
        print(f"damaged: {b}")
    if resume.returncode != 0:
        print(resume.stdout[-2000:], resume.stderr[-2000:])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ok = (resume.returncode == 0 and not left and not bad and not damaged_after_kills and not redone
          and valid == args.images and kills == args.kills)
    return 0 if ok else 1


def _redone(stdout: str) -> int | None:
    """The "damaged, redone" column of ``dense extract``'s summary."""
    lines = stdout.strip().splitlines()
    try:
        header, row = lines[-2], lines[-1]
        assert "damaged, redone" in header
        return int(row.split()[3])
    except (IndexError, ValueError, AssertionError):
        return None


def _valid_entries(cache: Path, images: Path) -> int:
    """Entries that are valid entries of the cache of this model (spec, shape, finite), through dense's own check."""
    import dense
    from dense.cache import FeatureCache
    from dense.extract import folder_items

    enc = dense.load_encoder(MODEL)  # the dtype `dense extract` chose by default
    fc = FeatureCache.for_encoder(cache, enc, dataset=images)
    return sum(fc.get(key) is not None for key, _ in folder_items(images))


if __name__ == "__main__":
    sys.exit(main())

"""Device, dtype and thread policy: which device a string names, which dtype ``"auto"`` means there, where a small
head's arithmetic runs (:func:`to_weights`), how many threads dense computes with; and what this machine is (its CPU,
this process's memory), read in one place."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dense.errors import DeviceError, InputError

log = logging.getLogger("dense")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or a :class:`torch.device` -> a device with its
    index resolved (``cuda`` -> ``cuda:<current>``), checked against this torch build and this machine.

    A CPU-only torch, a machine without a visible GPU, or an index past the last GPU raise :class:`DeviceError` with
    one line saying so (not torch's internal ``_cuda_setDevice`` / "a specified index" errors).
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"device {device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'") from e
    if d.type != "cuda":
        return d
    if not torch.backends.cuda.is_built():
        raise DeviceError(f"device {str(device)!r}: this torch ({torch.__version__}) was built without CUDA; install "
                          f"a CUDA build of torch (see the README's install section) or use --device cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r}: torch has CUDA but sees no GPU (driver missing, or "
                          f"CUDA_VISIBLE_DEVICES hides them); use --device cpu")
    n = torch.cuda.device_count()
    index = torch.cuda.current_device() if d.index is None else d.index
    if not 0 <= index < n:
        raise DeviceError(f"device {str(device)!r}: this machine has {n} GPU(s), cuda:0..cuda:{n - 1}")
    return torch.device("cuda", index)

# Towers smaller than this run float32 under dtype="auto" (dense.compiled.MIN_PARAMS is the same line): at ~1 M
# parameters bf16 saves no time worth having, and float32 gives the same figures on every CPU (bf16 on AMX/AVX512-BF16,
# float32 on AVX2 would not).
SMALL_TOWER_PARAMS = 50_000_000

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Does ``device`` run bfloat16 matmuls in hardware (CUDA compute capability >= 8; CPUs with AMX or AVX512-BF16)?"""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence getattr
        return any(bool(getattr(torch.cpu, n, lambda: False)()) for n in names)
    return False


def resolve_dtype(dtype, device: str | torch.device = "cpu", *, params: int | None = None) -> torch.dtype:
    """``"auto"`` (or None) -> bfloat16 where ``device`` runs it natively, else float32; names -> torch dtypes.

    ``params``: the tower's parameter count, when known. A tower of fewer than :data:`SMALL_TOWER_PARAMS` (the bundled
    ``shapes-tiny`` models, ~1 M) resolves ``"auto"`` to float32 on every device.

    The tower runs in this dtype; the MAP head's pieces and all scoring run in float32 whatever it is
    (:mod:`dense.head`). CPUs without bf16 instructions emulate it (``benchmarks/extract.py`` measures both on the
    machine at hand). float16 is refused on every device, one rule: CPUs emulate it, and dense's numerics are checked
    in bf16 and fp32 only (``benchmarks/heatmap_dtype.py``). An explicit bf16 on a GPU without native bf16 logs one
    warning line (:func:`bf16_warning`).
    """
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        small = params is not None and params < SMALL_TOWER_PARAMS
        return torch.bfloat16 if native_bf16(device) and not small else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype {dtype!r}: use 'auto', 'fp32', 'bf16' (or 'float32', 'bfloat16') or a torch dtype")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16:
        raise InputError(f"dtype float16 (on {device}): dense runs in bfloat16 or float32 only. Use dtype='auto' "
                         "(bfloat16 where the device runs it natively, else float32), 'bf16' or 'fp32'.")
    if device.type == "cuda" and torch.cuda.is_available():
        msg = bf16_warning(dtype, device, torch.cuda.get_device_capability(device))
        if msg:
            log.warning(msg)
    return dtype


def bf16_warning(dtype: torch.dtype, device: torch.device, capability: tuple[int, int]) -> str | None:
    """The one-line warning for an explicit ``dtype`` on a CUDA ``device`` of compute ``capability`` (major, minor):
    bfloat16 below 8.0 (no native bf16 matmuls) gets one; anything else None."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cuda" or tuple(capability)[0] >= 8:
        return None
    major, minor = capability
    return (f"dense: dtype bfloat16 on {device} (compute capability {major}.{minor}): this GPU has no native bf16 "
            "matmuls (8.0 and later do), so it runs slowly; dtype='auto' picks float32 here")


def to_weights(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``x`` on the device and in the dtype of ``module``'s parameters: where a small head's arithmetic runs (its
    outputs come back to the CPU as float32, like every output of dense)."""
    p = next(module.parameters())
    return x.to(p.device, p.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Threads: how many cores this process computes on

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_threads_set: int | None = None  # what set_threads last set in this process


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where the OS does not say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads dense computes with when none are given: ``OMP_NUM_THREADS`` when it is set (by the user, or by an
    earlier :func:`set_threads` of this process); otherwise the usable cores less those :func:`machine_load` finds
    busy (rounded to the nearest whole core), at least 1.

    Why not every core: torch's OpenMP threads meet at a barrier after every parallel region, so on a machine that
    other processes keep busy, each region waits for its preempted thread, and more threads than free cores run
    several times slower with identical results (``python benchmarks/threads.py`` prints every core, 1 and this rule
    side by side with the load average).
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = usable_cores()
    return max(1, min(cores, cores - int(machine_load() + 0.5)))


def machine_load() -> float:
    """Cores that other processes keep busy: the smaller of the 1-minute load average and the tasks runnable right
    now besides this one (``/proc/loadavg``, the median of 5 reads 10 ms apart). The average alone would count a
    command that just finished here (it remembers a minute); the instant alone, a passing blip. 0 where the OS gives
    neither."""
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: no load average
        return 0.0
    now = []
    for k in range(5):
        others = _runnable_others()
        if others is None:  # not Linux: the average alone
            return average
        now.append(others)
        if k < 4:
            time.sleep(0.01)
    return min(average, float(statistics.median(now)))


def _runnable_others() -> int | None:
    """Tasks runnable at this instant besides this process (``/proc/loadavg``'s fourth field); None without it."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)  # this process, reading the file, is one of them


def set_threads(threads: int | None = None) -> int:
    """Compute on ``threads`` threads from now on (None: :func:`default_threads`); returns the number set.

    Sets torch's intra-op threads, limits the BLAS and OpenMP libraries already loaded (numpy's, scikit-learn's:
    through ``threadpoolctl``, installed with scikit-learn), and sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` for libraries loaded later and for worker processes. Decode workers
    (:func:`dense.batching.default_num_workers`) are capped by the same number.
    """
    global _threads_set
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(n)
    _threads_set = n
    for name in _THREAD_ENV:
        os.environ[name] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn installs it; without it, the variables above still reach later libraries
        return n
    threadpool_limits(limits=n)
    return n


def ensure_threads(threads: int | None = None) -> int:
    """:func:`set_threads` of ``threads`` when given; with None, the default once per process (what an earlier call
    set is kept). What :func:`dense.load_encoder` calls."""
    if threads is None and _threads_set is not None:
        return _threads_set
    return set_threads(threads)


# ---------------------------------------------------------------------------------------------------------------------
# What this machine is: the one reader of the CPU's description and of this process's memory


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name (``lscpu``'s "Model name", read from ``/proc/cpuinfo``) and the flags that decide its
    matmul speed (``avx2`` ... ``amx_bf16``)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the platform's name, and torch's own view of the vector unit
        model = platform.processor() or model
        flags = {torch.backends.cpu.get_cpu_capability().lower()}
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return model, [f for f in wanted if f in flags]


def rss_gib() -> float:
    """This process's resident memory now, GiB (``/proc/self/statm``; the peak so far where there is no such file)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return peak_rss_gib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, GiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)

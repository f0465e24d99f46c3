"""A static-shape compiled vision tower (inductor, weights frozen), and the one-off per-machine measurement that decides
whether :class:`~dense.Encoder` uses it by default.

Why static shapes: every new ``(batch, tokens)`` shape is a new compiled graph. Each image's tokens are zero-padded up
to a *bucket* (a multiple of a quarter of the token budget: 183, 366, 549, 732 for 729) and the padded keys are masked
in every block, as the eager mixed-grid batches already do, so one graph per (batch size, bucket) serves every aspect
ratio. Padded rows are dropped afterwards: tokens equal eager's within the dtype's rounding.

Why frozen weights: inductor then treats the weights as constants (folded, pre-packed for oneDNN on CPUs), which is
where the gain is on CPUs with AMX / AVX512-BF16. On CPUs that run float32 only, the tower is matmul-bound either way,
so compiling may not pay: that is measured, not assumed (:func:`decide`).

Compiled artifacts persist across processes in inductor's caches under ``dense_home()/inductor`` (unless
``TORCHINDUCTOR_CACHE_DIR`` is set), so the code-generation cost is paid once per machine; a later process still
traces the graph again (seconds), which :func:`measure` reports as the second call's cost.

The decision (``dense_home()/compile.json``) holds one record per machine key (CPU model and flags, or GPU name and
capability; torch version; threads; dtype; tower width): ``compile`` (on when the compiled slice is at least
``PAYS`` times faster than eager), ``cudagraphs`` (GPUs: the compiled slice replayed as a CUDA graph is ``PAYS``
times faster again), ``batch_pays`` (whether 4 images per pass cost less per image than 1), and the
measured figures. Delete the file (or one record) to measure again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from dense.errors import InputError

log = logging.getLogger("dense")

DECISION_FILE = "compile.json"
BUCKETS = 4  # buckets per token budget: padding waste at most a quarter of the budget
PAYS = 1.05  # compiled / eager speed ratio from which compiling is on by default (margin for timing noise)
BATCH_LOSES = 1.05  # per-image time at batch 4 / batch 1 from which images go one per pass
MIN_PARAMS = 50_000_000  # smaller towers never compile by default: compile time outweighs what they could save
COMPILE_CHOICES = (True, False, "auto")


def check_compile_option(compile) -> None:
    if compile not in COMPILE_CHOICES or not isinstance(compile, (bool, str)):
        raise InputError(f"compile={compile!r}: use True, False or 'auto'")


def bucket_tokens(n_tokens: int, budget: int, buckets: int = BUCKETS) -> int:
    """The padded length for ``n_tokens``: the next multiple of ``ceil(budget / buckets)`` (beyond the budget too)."""
    step = max(1, math.ceil(budget / buckets))
    return step * math.ceil(n_tokens / step)


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled code: ``$TORCHINDUCTOR_CACHE_DIR`` if the user set it, else
    ``dense_home()/inductor``.

    ``import torch._dynamo`` (which transformers does) writes torch's own default (``/tmp/torchinductor_<user>``) into
    that variable, so a value equal to torch's default counts as unset: dense's kernels then go under ``dense_home()``,
    which survives a reboot, instead of the temp folder.
    """
    from dense.checkpoint import dense_home

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env and os.path.abspath(env) != _torch_default_cache_dir():
        return Path(env)
    return dense_home() / "inductor"


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch that moved it: only an unset variable counts as unset
        return None
    return os.path.abspath(default_cache_dir())


def key_mask(valid: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """``valid [B, N]`` (True = a real token) -> the attention mask over keys ``[B, 1, N, N]`` that transformers'
    attention functions take: boolean (True = attend) for SDPA and the like, additive (0 / dtype min) for ``eager``.

    The same values as ``transformers.masking_utils.create_bidirectional_mask``, but always a tensor (never ``None``
    when nothing is padded), so one compiled graph serves padded and unpadded batches alike.
    """
    B, N = valid.shape
    keys = valid[:, None, None, :].expand(B, 1, N, N)  # [B, N] -> [B, 1, N(queries), N(keys)]
    if attn_implementation == "eager":
        return torch.zeros(keys.shape, dtype=dtype, device=valid.device).masked_fill(~keys, torch.finfo(dtype).min)
    return keys


class Blocks(torch.nn.Module):
    """Encoder blocks ``0..max(blocks)`` (+ ``post_layernorm`` after the tower's last block), reading ``blocks``.

    ``forward(x [B, N, D], mask [B, 1, N, N]) -> [B, N, D * len(blocks)]``, in the tower's dtype. Shares the tower's
    weights (no copy); what :class:`CompiledTower` compiles, and the eager reference of :func:`measure`.
    """

    def __init__(self, vision: torch.nn.Module, blocks: Sequence[int], *, post_layernorm: bool = True):
        super().__init__()
        n_blocks = vision.config.num_hidden_layers
        self.blocks = tuple(int(b) for b in blocks)
        self.layers = torch.nn.ModuleList(vision.encoder.layers[: max(self.blocks) + 1])
        self.final = n_blocks - 1 if post_layernorm else -1  # the block read after post_layernorm
        self.post_layernorm = vision.post_layernorm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kept = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)  # [B, N, D]
            if i in self.blocks:
                kept[i] = self.post_layernorm(x) if i == self.final else x
        return torch.cat([kept[b] for b in self.blocks], dim=-1)  # [B, N, D * len(blocks)]


def _compile(module: torch.nn.Module, device: torch.device, cudagraphs: bool = False):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())  # inductor reads it on each use
    options = {"freezing": True}
    if device.type == "cuda" and cudagraphs:
        options["triton.cudagraphs"] = True
    return torch.compile(module, fullgraph=True, dynamic=False, options=options)


class CompiledTower:
    """The vision tower's blocks compiled for static shapes: ``(x [B, N, D], lengths) -> [B, bucket, D * L]``.

    ``x`` is the embedded batch (zero-padded to its longest image), ``lengths`` each image's real token count. One
    compiled graph per (blocks read, batch size, bucket), built on first use (inductor's disk cache makes that
    seconds after the first process on a machine). Weights are frozen into the graph when it is built: a tower whose
    weights change afterwards needs a new ``CompiledTower``.
    """

    def __init__(self, vision: torch.nn.Module, *, budget: int, device: torch.device, cudagraphs: bool = False):
        self.vision = vision
        self.budget = int(budget)
        self.device = device
        self.cudagraphs = cudagraphs
        self.attn_implementation = vision.config._attn_implementation
        self._graphs: dict[tuple[int, ...], torch.nn.Module] = {}

    def __call__(self, x: torch.Tensor, lengths: Sequence[int], blocks: Sequence[int]) -> torch.Tensor:
        B, N, _ = x.shape
        bucket = bucket_tokens(N, self.budget)
        x = torch.nn.functional.pad(x, (0, 0, 0, bucket - N))  # [B, N, D] -> [B, bucket, D], zero rows
        valid = torch.arange(bucket, device=x.device)[None] < torch.tensor(list(lengths), device=x.device)[:, None]
        mask = key_mask(valid, self.attn_implementation, x.dtype)  # [B, 1, bucket, bucket]
        key = tuple(int(b) for b in blocks)
        if key not in self._graphs:
            self._graphs[key] = _compile(Blocks(self.vision, key), self.device, self.cudagraphs)
        # Each (batch size, bucket) is one more graph of the same code: allow many before dynamo gives up.
        with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
            return self._graphs[key](x, mask)  # [B, bucket, D * L]


# ---------------------------------------------------------------------------------------------------------------------
# The per-machine decision


def machine_key(device: torch.device, dtype: torch.dtype, hidden_size: int) -> str:
    """What a measured decision holds for: the processor (model and flags) or GPU, torch, threads, dtype, width."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        where = f"cuda {torch.cuda.get_device_name(device)} sm{cap[0]}{cap[1]}"
    else:
        model, flags = cpu_model_and_flags()
        where = f"cpu {model} [{' '.join(flags) or 'no avx2'}] {torch.get_num_threads()} threads"
    return f"{where} | torch {torch.__version__} | {str(dtype).removeprefix('torch.')} | width {hidden_size}"


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and the flags that decide its matmul speed (``avx2`` ... ``amx_bf16``)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: torch's own view of the vector unit
        flags = {torch.backends.cpu.get_cpu_capability().lower()}
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return model, [f for f in wanted if f in flags]


def decision_path() -> Path:
    from dense.checkpoint import dense_home

    return dense_home() / DECISION_FILE


def read_decisions() -> dict:
    """All stored records, ``{}`` if none. A damaged file is reported (one line naming it) and measured anew."""
    path = decision_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise InputError("not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("dense: %s is damaged (%s); measuring again", path, e)
        return {}


def write_decision(key: str, record: dict) -> Path:
    """Store ``record`` under ``key``, keeping the other machines' records (atomic: never a half file)."""
    from dense._atomic import write_json

    data = read_decisions()
    data[key] = record
    return write_json(decision_path(), data, indent=1, sort_keys=True)


def measure(vision: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, tokens: int, n_blocks: int = 2,
            repeats: int = 5) -> dict:
    """Time the first ``n_blocks`` blocks of ``vision`` at ``tokens`` tokens: eager as dense runs it (no padding, no
    mask) at batch 1 and 4, and compiled (padded to the bucket, masked) at batch 1, interleaved, medians of
    ``repeats``. Per-block cost is the same in every block, so the ratio holds for the whole tower. On a GPU the
    compiled slice is also timed with CUDA graphs (``cudagraphs_s``).
    """
    from transformers.masking_utils import create_bidirectional_mask

    n_blocks = min(n_blocks, vision.config.num_hidden_layers)
    part = Blocks(vision, (n_blocks - 1,), post_layernorm=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, tokens, vision.config.hidden_size, generator=gen).to(device, dtype)  # [1, N, D]
    x4 = x1.expand(4, -1, -1).contiguous()  # [4, N, D]
    tower = CompiledTower(vision, budget=tokens, device=device)
    tower._graphs[(n_blocks - 1,)] = _compile(part, device)

    def eager(x):
        valid = torch.ones(x.shape[:2], dtype=torch.int32, device=device)
        return part(x, create_bidirectional_mask(config=vision.config, inputs_embeds=x, attention_mask=valid))

    def timed(fn, x):
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        return time.perf_counter() - t0

    def compiled(x):
        return tower(x, [tokens] * x.shape[0], (n_blocks - 1,))

    graphed = None
    if device.type == "cuda":
        graphed = CompiledTower(vision, budget=tokens, device=device, cudagraphs=True)
        graphed._graphs[(n_blocks - 1,)] = _compile(part, device, cudagraphs=True)

    with torch.inference_mode():
        eager(x1)
        eager(x4)
        compile_s = timed(compiled, x1)
        times: dict[str, list[float]] = {"eager": [], "eager4": [], "compiled": []}
        if graphed is not None:
            try:
                for _ in range(3):  # CUDA graphs record on a later call than the first
                    graphed(x1, [tokens], (n_blocks - 1,))
                times["cudagraphs"] = []
            except Exception as e:  # CUDA graphs are an extra: without them the compiled figures still stand
                log.warning("dense: CUDA graphs failed here (%s: %s); measuring without them", type(e).__name__, e)
                graphed = None
        for _ in range(repeats):
            times["eager"].append(timed(eager, x1))
            times["compiled"].append(timed(compiled, x1))
            times["eager4"].append(timed(eager, x4) / 4)
            if graphed is not None:
                times["cudagraphs"].append(timed(lambda x: graphed(x, [tokens], (n_blocks - 1,)), x1))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"speedup": med["eager"] / med["compiled"], "eager_s": med["eager"], "compiled_s": med["compiled"],
           "batch4_per_image_s": med["eager4"], "first_call_s": compile_s, "blocks": n_blocks, "tokens": tokens,
           "repeats": repeats}
    if "cudagraphs" in med:
        out["cudagraphs_s"] = med["cudagraphs"]
    return out


def decide(vision: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, budget: int,
           measure_if_missing: bool = True, min_params: int | None = None) -> dict | None:
    """This machine's record for ``vision``'s width in ``dtype``: read from ``dense_home()/compile.json``, or measured
    once (:func:`measure`, about a minute: one compile of a 2-block slice) and stored. ``None`` for towers of fewer
    than ``min_params`` (default :data:`MIN_PARAMS`) parameters, and when there is no record and
    ``measure_if_missing`` is false.
    """
    if sum(p.numel() for p in vision.parameters()) < (MIN_PARAMS if min_params is None else min_params):
        return None
    key = machine_key(device, dtype, vision.config.hidden_size)
    record = read_decisions().get(key)
    if record is not None or not measure_if_missing:
        return record
    log.warning("dense: measuring once whether a compiled tower pays on this machine (%s); stored in %s",
                key, decision_path())
    try:
        figures = measure(vision, device=device, dtype=dtype, tokens=budget)
        on = figures["speedup"] >= PAYS
        graphs = figures.get("cudagraphs_s", float("inf")) * PAYS <= min(figures["compiled_s"], figures["eager_s"])
        on = on or graphs
        record = {"compile": on, "cudagraphs": graphs,
                  "batch_pays": figures["batch4_per_image_s"] < BATCH_LOSES * figures["eager_s"], **figures,
                  "rule": f"on when eager s / compiled s >= {PAYS} on {figures['blocks']} blocks"}
    except Exception as e:  # a compiler that cannot build here (no C++ compiler, an unsupported op): eager it is
        log.warning("dense: the compiled tower failed to build here (%s: %s); using eager", type(e).__name__, e)
        record = {"compile": False, "batch_pays": True, "error": f"{type(e).__name__}: {e}"}
    record["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_decision(key, record)
    return record

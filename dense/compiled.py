"""A static-shape compiled vision tower (inductor, weights frozen), and the explicit, per-machine measurement of
whether it pays (:func:`check_compile`, ``dense compile-check``).

Compiling is opt-in. ``compile=True`` compiles; ``compile=False`` never does; ``compile="auto"`` (the default) follows
this machine's record written by :func:`check_compile` and otherwise runs the plain transformers layers, saying once
per process, in one line, how to measure (towers under :data:`MIN_PARAMS` parameters stay eager without a word). No
measurement is ever started implicitly, and nothing here changes the batch size a caller asked for.

Why static shapes: every new token count is a new compiled graph. Each image's tokens are zero-padded up to a *bucket*
(a multiple of a quarter of the token budget: 183, 366, 549, 732 for 729) and the padded keys are masked in every
block, as the eager mixed-grid batches already do, so one graph per bucket serves every aspect ratio. Padded rows are
dropped afterwards: tokens equal eager's within the dtype's rounding. The batch dimension is dynamic (one graph serves
every batch of two or more images: a partial last batch does not compile again); a single image has a graph of its
own, since torch specializes a dimension of size 1. So a set of blocks compiles at most twice per bucket.

Why frozen weights: inductor then treats the weights as constants (folded, pre-packed for oneDNN on CPUs), which is
where the gain is on CPUs with AMX / AVX512-BF16. On CPUs that run float32 only, the tower is matmul-bound either way,
so compiling may not pay: that is measured, not assumed (:func:`check_compile`).

Compiled artifacts persist across processes in inductor's caches under ``dense_home()/inductor`` (unless
``TORCHINDUCTOR_CACHE_DIR`` is set), so the code-generation cost is paid once per machine; a later process still
traces the graph again (seconds).

The record (``dense_home()/compile.json``) holds one entry per machine key (CPU model and flags, or GPU name and
capability; torch version; threads; dtype; tower width): ``compile`` (on when the compiled slice is at least ``PAYS``
times faster than eager), ``cudagraphs`` (GPUs: the compiled slice replayed as a CUDA graph is ``PAYS`` times faster
again), the measured figures and what the measurement cost. Delete the file (or one entry) to go back to eager.
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

from dense.device import SMALL_TOWER_PARAMS, cpu_model_and_flags
from dense.errors import InputError

log = logging.getLogger("dense")

DECISION_FILE = "compile.json"
BUCKETS = 4  # buckets per token budget: padding waste at most a quarter of the budget
PAYS = 1.05  # compiled / eager speed ratio from which compile="auto" compiles (margin for timing noise)
MIN_PARAMS = SMALL_TOWER_PARAMS  # smaller towers (the bundled toys, test towers) get no "how to measure" line
COMPILE_CHOICES = (True, False, "auto")
HOW_TO_MEASURE = "dense compile-check --model MODEL"  # the one line printed when "auto" has no record to follow


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

    ``forward(x [B, N, D], mask [B, 1, N, N] or None) -> [B, N, D * len(blocks)]``, in the tower's dtype. Shares the
    tower's weights (no copy). The one loop over the blocks: :func:`dense.batching.forward_tower` runs it eagerly,
    :class:`CompiledTower` compiles it, :func:`measure` times both.
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
        if B > 1:  # one graph for every batch of 2+ (torch gives size 1 a graph of its own)
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(mask, 0)
        # Each bucket (and a single image) is one more graph of the same code: allow many before dynamo gives up.
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


def decision_path() -> Path:
    from dense.checkpoint import dense_home

    return dense_home() / DECISION_FILE


def read_decisions() -> dict:
    """All stored records, ``{}`` if none. A damaged file is reported (one line naming it) and ignored."""
    path = decision_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise InputError("not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("dense: %s is damaged (%s); ignored (`%s` writes it again)", path, e, HOW_TO_MEASURE)
        return {}


def write_decision(key: str, record: dict) -> Path:
    """Store ``record`` under ``key``, keeping the other machines' records (atomic: never a half file)."""
    from dense._atomic import write_json

    data = read_decisions()
    data[key] = record
    return write_json(decision_path(), data, indent=1, sort_keys=True)


def stored_decision(vision: torch.nn.Module, *, device: torch.device, dtype: torch.dtype) -> dict | None:
    """This machine's record for ``vision``'s width in ``dtype`` (written by :func:`check_compile`), or ``None``.
    Reads only: nothing is measured here."""
    return read_decisions().get(machine_key(device, dtype, vision.config.hidden_size))


_told_how_to_measure = False


def tell_how_to_measure(vision: torch.nn.Module) -> bool:
    """Say once per process, in one line, that ``compile="auto"`` found no record and how to write one; towers under
    :data:`MIN_PARAMS` parameters get no line. Returns whether the line was printed now."""
    global _told_how_to_measure
    if _told_how_to_measure or sum(p.numel() for p in vision.parameters()) < MIN_PARAMS:
        return False
    _told_how_to_measure = True
    log.warning("dense: running the tower eagerly (no compile record for this machine); `%s` measures whether "
                "compiling pays here", HOW_TO_MEASURE)
    return True


def measure(vision: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, tokens: int, batch_size: int = 8,
            n_blocks: int = 2, repeats: int = 5) -> dict:
    """Time the first ``n_blocks`` blocks of ``vision`` at ``tokens`` tokens, ``batch_size`` images per pass: eager as
    dense runs it (no padding, no mask) and compiled (padded to the bucket, masked), interleaved, medians of ``repeats``
    (``first_call_s``: the compiled slice's first call, which builds it). Per-block cost is the same in every block,
    so the ratio holds for the whole tower. On a GPU the compiled slice is also timed with CUDA graphs
    (``cudagraphs_s``).
    """
    from transformers.masking_utils import create_bidirectional_mask

    n_blocks = min(n_blocks, vision.config.num_hidden_layers)
    part = Blocks(vision, (n_blocks - 1,), post_layernorm=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch_size, tokens, vision.config.hidden_size, generator=gen).to(device, dtype)  # [B, N, D]
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
        eager(xb)
        compile_s = timed(compiled, xb)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        if graphed is not None:
            try:
                for _ in range(3):  # CUDA graphs record on a later call than the first
                    graphed(xb, [tokens] * batch_size, (n_blocks - 1,))
                times["cudagraphs"] = []
            except Exception as e:  # CUDA graphs are an extra: without them the compiled figures still stand
                log.warning("dense: CUDA graphs failed here (%s: %s); measuring without them", type(e).__name__, e)
                graphed = None
        for _ in range(repeats):
            times["eager"].append(timed(eager, xb))
            times["compiled"].append(timed(compiled, xb))
            if graphed is not None:
                times["cudagraphs"].append(timed(lambda x: graphed(x, [tokens] * batch_size, (n_blocks - 1,)), xb))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"speedup": med["eager"] / med["compiled"], "eager_s": med["eager"], "compiled_s": med["compiled"],
           "first_call_s": compile_s, "blocks": n_blocks, "tokens": tokens, "batch_size": batch_size,
           "repeats": repeats}
    if "cudagraphs" in med:
        out["cudagraphs_s"] = med["cudagraphs"]
    return out


def check_compile(vision: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, budget: int,
                  batch_size: int = 8, repeats: int = 5) -> dict:
    """Measure now whether the compiled tower pays on this machine (:func:`measure`: one compile of a 2-block slice
    at ``budget`` tokens and ``batch_size`` images per pass, then eager and compiled timed in turn) and store the
    decision in ``dense_home()/compile.json``, where ``compile="auto"`` reads it. Returns the record: ``compile``,
    ``cudagraphs``, the figures, ``cost_s`` (what this check took, wall clock) and ``path``; ``error`` where the
    compiler could not build here (then ``compile`` is False).
    """
    key = machine_key(device, dtype, vision.config.hidden_size)
    t0 = time.perf_counter()
    try:
        figures = measure(vision, device=device, dtype=dtype, tokens=budget, batch_size=batch_size, repeats=repeats)
        graphs = figures.get("cudagraphs_s", float("inf")) * PAYS <= min(figures["compiled_s"], figures["eager_s"])
        record = {"compile": figures["speedup"] >= PAYS or graphs, "cudagraphs": graphs, **figures,
                  "rule": f"on when eager s / compiled s >= {PAYS} on {figures['blocks']} blocks"}
    except Exception as e:  # a compiler that cannot build here (no C++ compiler, an unsupported op): eager it is
        record = {"compile": False, "cudagraphs": False, "error": f"{type(e).__name__}: {e}"}
    record["cost_s"] = time.perf_counter() - t0
    record["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["key"] = key
    path = write_decision(key, record)
    return {**record, "path": str(path)}

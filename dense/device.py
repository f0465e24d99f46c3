"""Device and dtype policy: which device a string names, which dtype ``"auto"`` means there, and where a small head's
arithmetic runs (:func:`to_weights`)."""

from __future__ import annotations

import logging

import torch

from dense.errors import DeviceError

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


def resolve_dtype(dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` (or None) -> bfloat16 where ``device`` runs it natively, else float32; names -> torch dtypes.

    The tower runs in this dtype; the MAP head's pieces and all scoring run in float32 whatever it is
    (:mod:`dense.head`). CPUs without bf16 instructions emulate it (``benchmarks/extract.py`` measures both on the
    machine at hand). float16 is refused on every device, one rule: CPUs emulate it, and dense's numerics are checked
    in bf16 and fp32 only (``benchmarks/heatmap_dtype.py``). An explicit bf16 on a GPU without native bf16 logs one
    warning line (:func:`bf16_warning`).
    """
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use 'auto', 'fp32', 'bf16' (or 'float32', 'bfloat16') or a torch dtype")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16:
        raise ValueError(f"dtype float16 (on {device}): dense runs in bfloat16 or float32 only. Use dtype='auto' "
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

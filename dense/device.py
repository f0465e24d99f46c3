"""Device and dtype policy: which device a string names, which dtype ``"auto"`` means there."""

from __future__ import annotations

import torch

from dense.errors import DeviceError


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

    CPUs without bf16 instructions emulate it several times slower than float32 (``benchmarks/extract.py`` measures
    both on the machine at hand); float16 runs at ~1 GFLOP/s on CPUs, so it is refused there.
    """
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use 'auto', {', '.join(repr(k) for k in _DTYPES)} or a torch dtype")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype float16 on a CPU device: CPUs run float16 matmuls at ~1 GFLOP/s (emulated). Use "
                         "dtype='auto' (bfloat16 where the CPU has AMX/AVX512-BF16, else float32), 'bf16' or 'fp32'.")
    return dtype

"""Argument checks of the generated functions: one helper per kind of argument.

Every public function of a generated module (prefill, reference, decode, Cache) checks its
arguments with these before a kernel touches memory, so a wrong shape, dtype, device,
layout or output buffer is a Python exception that names the argument, never an
out-of-bounds access. `where` is the name of the calling function, the first word of each
message; `error` is the exception class to raise (None: TypeError for a wrong type or
dtype, ValueError otherwise).
"""

from __future__ import annotations

import math
import os

import torch

HEAD_DIMS = (16, 32, 64, 128, 256)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True under the Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fail(error, default, message):
    raise (error or default)(message)


def dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


_AXES: dict[str, tuple[str, ...]] = {}


def _axes(dims: str) -> tuple[str, ...]:
    """The axis names of a `dims` text such as "B, H, T, D", parsed once (checks run per call;
    a plain dict, which torch.compile traces through, where it warns about lru_cache)."""
    if dims not in _AXES:
        _AXES[dims] = tuple(a.strip() for a in dims.split(","))
    return _AXES[dims]


def check_tensor(
    where: str,
    name: str,
    t,
    *,
    dims: str,
    shape=None,
    dtypes=None,
    dtype=None,
    device=None,
    contiguous: bool = False,
    last_contiguous: bool = False,
    error=None,
    owner: str = "it must be",
) -> torch.Tensor:
    """t, checked: a torch.Tensor of rank len(dims.split(',')) (`dims` names its axes, e.g.
    "B, H, T, D"), with `shape` (a tuple; None entries are free), a dtype among `dtypes` or equal
    to `dtype`, on `device`, contiguous (all of it, or its last dimension). `owner` phrases
    what sets dtype and device ("the cache is")."""
    axes = _axes(dims)
    if not isinstance(t, torch.Tensor):
        _fail(error, TypeError, f"{where}: {name} must be a torch.Tensor ({dims}), got {type(t).__name__}")
    if t.dim() != len(axes):
        _fail(
            error, ValueError, f"{where}: {name} must have rank {len(axes)} ({dims}); got {name}.shape={tuple(t.shape)}"
        )
    if shape is not None:
        for axis, want, got in zip(axes, shape, t.shape):
            if want is not None and got != want:
                expected = ", ".join(f"{a}={w}" if w is not None else a for a, w in zip(axes, shape))
                _fail(
                    error,
                    ValueError,
                    f"{where}: {name} must be ({expected}); got {name}.shape={tuple(t.shape)} "
                    f"({axis}={got}, expected {want})",
                )
    if dtypes is not None and t.dtype not in dtypes:
        _fail(error, TypeError, f"{where}: {name} must be one of {dtype_names(dtypes)}; got {name}.dtype={t.dtype}")
    if dtype is not None and t.dtype != dtype:
        _fail(error, TypeError, f"{where}: {name} is {t.dtype} but {owner} {dtype}")
    if device is not None and t.device != (device if isinstance(device, torch.device) else torch.device(device)):
        _fail(error, ValueError, f"{where}: {name} is on {t.device} but {owner} on {device}")
    if contiguous and not t.is_contiguous():
        _fail(
            error,
            ValueError,
            f"{where}: {name} must be contiguous; got {name}.stride()={tuple(t.stride())}; "
            f"call {name}.contiguous() first",
        )
    if last_contiguous and t.stride(-1) != 1 and t.shape[-1] > 1:
        _fail(
            error,
            ValueError,
            f"{where}: {name} must have a contiguous last dimension (stride 1); got "
            f"{name}.stride()={tuple(t.stride())}; call {name}.contiguous() first",
        )
    return t


def verdict_key(*tensors) -> tuple | None:
    """What check_tensor reads of each argument without a stride rule (shape, dtype, device; a
    None stays None), as a memo key of a verdict: a decode step passes the same kinds of
    tensors at every step. None where an argument is neither a tensor nor None (those take
    the full checks every time)."""
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) is torch.Tensor:
            key.append((t.shape, t.dtype, t.device))
        else:
            return None
    return tuple(key)


def check_out(where: str, out, *, dims: str, shape, dtype, device) -> torch.Tensor:
    """An `out=` buffer: exactly `shape`, `dtype`, on `device`, contiguous (the kernels write
    it with the strides of a contiguous tensor)."""
    return check_tensor(where, "out", out, dims=dims, shape=shape, dtype=dtype, device=device, contiguous=True)


def check_scale(where: str, scale, head_dim: int, name: str = "scale") -> float:
    """The softmax scale: 1 / sqrt(head_dim) when None, else a positive finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number; got {name}={scale!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{where}: {name} must be a positive number; got {name}={scale!r}")
    return value


def check_kernel_device(where: str, device, alternative: str, error=None) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter; say what to do."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    _fail(
        error,
        ValueError,
        f"{where}: the Triton kernel needs CUDA tensors (or CPU tensors with "
        f"TRITON_INTERPRET=1 set before triton is imported); got device {device}. "
        f"{alternative}",
    )


def check_int(where: str, name: str, value, lo: int, hi: int | None = None, error=None) -> int:
    """An int (not a bool) in [lo, hi) (hi None: no upper bound)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value >= hi):
        bound = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        _fail(error, ValueError, f"{where}: {name} must be an int {bound}; got {name}={value!r}")
    return value

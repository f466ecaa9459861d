"""The host side of prefill that does not vary per pattern: argument checks, launch
configuration, grid order, TMA eligibility.

What varies per pattern (PATTERN, the tuning of each group, the configuration tables)
reaches these functions as arguments; the generated module wraps them (config_for, _check).
"""

from __future__ import annotations

import math

import torch

from .checks import HEAD_DIMS, KERNEL_DTYPES, check_int, check_kernel_device, check_tensor

try:
    from triton.runtime.errors import OutOfResources as _OutOfResources
except ImportError:  # another triton layout: nothing to catch

    class _OutOfResources(Exception):
        pass


def check_layer(where: str, pattern: dict, layer) -> None:
    """`layer` is required when the pattern differs between layers, and must index one."""
    layers = pattern["model"]["layers"]
    if layer is None:
        if pattern["varies_by_layer"]:
            raise ValueError(
                f"{where}: pattern {pattern['name']!r} differs between layers: pass layer= (0 <= layer < {layers})"
            )
        return
    check_int(where, "layer", layer, 0, layers)


def check_prefill(where: str, pattern: dict, q, k, v, layer, kernel: bool, part=None) -> tuple:
    """(B, H, H_KV, N, D) of well-formed prefill inputs: q (B, H, N, D), k and v
    (B, H_KV, N, D), one dtype and device, GQA head counts, a supported head_dim, contiguous
    last dimensions, a valid layer; `kernel`: on a device the Triton kernel can use.
    part (prefill_at): (q_offset, k_lo, k_hi, head_ids): q holds the queries at q_offset ..
    of the N keys of k and v (N is theirs), the model's query heads head_ids (None: all)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(where, name, t, dims="B, H, N, D" if name == "q" else "B, H_KV, N, D")
    if q.dtype not in KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"{where}: q, k, v must share one dtype among float16, bfloat16, float32; "
            f"got q.dtype={q.dtype}, k.dtype={k.dtype}, v.dtype={v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"{where}: q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if kernel:
        check_kernel_device(where, q.device, "reference() runs anywhere.")
    B, H, N, D = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"{where}: k and v must have the same shape; got k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}"
        )
    Bk, H_KV, Nk, Dk = k.shape
    if part is not None:
        _check_part(where, pattern, part, H, N, Nk)
        N = Nk
    if (Bk, Nk, Dk) != (B, N, D):
        raise ValueError(
            f"{where}: k and v must be (batch={B}, kv_heads, seq={N}, head_dim={D}) to match q; "
            f"got k.shape={tuple(k.shape)} for q.shape={tuple(q.shape)}"
        )
    if H_KV == 0 or H % H_KV != 0:
        raise ValueError(
            f"{where}: the query heads must be a multiple of the key/value heads (GQA); "
            f"got H={H} query heads and H_KV={H_KV}"
        )
    if pattern["varies_by_head"] and H != pattern["model"]["heads"] and (part is None or part[3] is None):
        raise ValueError(
            f"{where}: pattern {pattern['name']!r} assigns patterns per head for a model with "
            f"{pattern['model']['heads']} query heads; got H={H}"
        )
    if D not in HEAD_DIMS:
        raise ValueError(f"{where}: head_dim must be one of {HEAD_DIMS}; got D={D}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(where, name, t, dims="B, H, N, D", last_contiguous=True)
    check_layer(where, pattern, layer)
    return B, H, H_KV, N, D


def _check_part(where: str, pattern: dict, part, H: int, n_q: int, n_k: int) -> None:
    """q_offset, the key range and the head ids of prefill_at."""
    q_offset, k_lo, k_hi, heads = part
    check_int(where, "q_offset", q_offset, 0)
    if q_offset + n_q > n_k:
        raise ValueError(f"{where}: queries at {q_offset} .. {q_offset + n_q - 1} lie beyond the {n_k} keys of k")
    check_int(where, "k_range[0]", k_lo, 0)
    check_int(where, "k_range[1]", k_hi, k_lo)
    if heads is not None:
        model = pattern["model"]["heads"]
        if len(heads) != H or len(set(heads)) != H or not all(0 <= h < model for h in heads):
            raise ValueError(
                f"{where}: heads must name the {H} distinct query heads of q among 0 .. {model - 1}; got {heads}"
            )


def check_key_tile(where: str, k_lo: int, k_hi: int, n_k: int, block_n: int) -> None:
    """prefill_at's key range starts and ends on key tiles (or ends at N)."""
    if k_lo % block_n or (k_hi % block_n and k_hi < n_k):
        raise ValueError(
            f"{where}: k_range must start and end on multiples of the key tile, {block_n} here "
            f"(128 suits every configuration), or end at N={n_k}; got ({k_lo}, {k_hi})"
        )


def device_key(device, dtype) -> tuple:
    """(compute capability or None on the CPU, dtype kind): what the launch tables are keyed by."""
    cap = None if torch.device(device).type == "cpu" else tuple(torch.cuda.get_device_capability(device))
    return cap, "fp32" if dtype == torch.float32 else "16bit"


def _tma_ok(*tensors) -> bool:
    """Host-side TMA descriptors need 16-byte aligned bases and strides."""
    return all(
        t.data_ptr() % 16 == 0 and all((s * t.element_size()) % 16 == 0 for s in t.stride()[:-1]) for t in tensors
    )


def _head_group(cfg: dict, B: int, H: int, N: int, D: int, element_size: int) -> tuple:
    """Grid order 3 (heads interleaved in groups) when a group's keys and values fit in L2."""
    if cfg["GRID_ORDER"] == 3:
        return 3, math.gcd(cfg.get("HEAD_GROUP", 4), B * H)
    if cfg["GRID_ORDER"] != 2:
        return cfg["GRID_ORDER"], 1
    kv_bytes = 2 * N * D * element_size
    group = max(1, (24 << 20) // kv_bytes)
    group = min(1 << (group.bit_length() - 1), 8)
    group = math.gcd(group, B * H)
    return (3, group) if group > 1 else (2, 1)

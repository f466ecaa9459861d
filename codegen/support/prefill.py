"""The host side of prefill that does not vary per pattern: argument checks, launch
configuration, grid order, TMA descriptors, the launches of the generic and the tile-order
kernels, and the per-shape memo that keeps a call's host time small.

What varies per pattern (PATTERN, the tuning of each group, the configuration tables, the
kernels) reaches these functions as a `PrefillSpec`; the generated module wraps them
(config_for, _check, _forward).

Host time: everything a call derives from the shapes, strides, dtypes, devices, layer and
scale (the checks' verdict, configurations, grids, launch arguments, the compiled kernels) is
computed once and kept in `PrefillSpec.memo` under one key (`plan_key`); a later call with
the same key (`prefill_fast`) only allocates the output and launches the compiled kernels
directly (launch.FastLaunch), the TMA descriptors built in the kernel (USE_TMA 3) or, with
host-side ones (USE_TMA 2), encoded by the raw launch once per data address
(launch.RawLaunch; the first launch fills them here).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .checks import (
    HEAD_DIMS,
    KERNEL_DTYPES,
    check_int,
    check_kernel_device,
    check_scale,
    check_tensor,
    interpreting,
)
from .hopper import hopper_launcher, hopper_ok
from .launch import FastLaunch, cdiv, table

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


try:
    from triton.tools.tensor_descriptor import TensorDescriptor as _TensorDescriptor
except ImportError:  # a triton without host-side descriptors: plans never ask for them
    _TensorDescriptor = None


def _descriptor(base, shape: list, strides: list, block: list):
    """A host-side TMA descriptor of `base`, without TensorDescriptor's per-call validation:
    the plan checked alignment and strides once (_tma_ok, grid_tma_views), and its memo key
    (plan_key: shapes, strides, 16-byte aligned inputs) keeps them true for every call."""
    d = object.__new__(_TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.padding = base, shape, strides, block, "zero"
    return d


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


_LOG2E = 1.4426950408889634
_SPILL_LIMIT = 64  # bytes of local memory per thread that a register cap may cost


class PrefillSpec(NamedTuple):
    """What a pattern's prefill needs from its generated module."""

    pattern: dict  # PATTERN
    group_table: list  # [layer][query head] -> pattern group
    tuning: list  # per group: block_cap, rows_cap, narrow, grows, residue, grid
    kernel: Callable  # the generic kernel, _fwd_kernel
    grid_kernels: tuple  # per group: its tile-order kernel, or None
    grid_tiles: list  # per group: None or {(BLOCK_M, BLOCK_N): (query tile, key tile)}
    grid_shape: list  # per group: None or (grid dims, prefix, grid tokens)
    choose: Callable  # compiler/configs.choose_config, as the module carries it
    configs: list  # CONFIGS
    grid_configs: list  # GRID_CONFIGS
    cpu_config: dict  # CPU_CONFIG
    memo: dict  # per-shape results: configurations, head tables, checks, launch plans
    select_block: int = 0  # a selection's key block (0: the pattern selects nothing)


def config_of(spec: PrefillSpec, device, dtype, head_dim, overrides=None, group=0) -> dict:
    """The launch configuration of a pattern group on `device` (a dict; see CONFIGS), memoised.
    `overrides` (a dict of the same keys) replaces table entries, pattern caps included."""
    key = ("config", str(device), dtype, head_dim, tuple(sorted((overrides or {}).items())), group)
    cfg = spec.memo.get(key)
    if cfg is None:
        cfg = spec.choose(
            spec.tuning[group],
            *device_key(device, dtype),
            head_dim,
            overrides,
            spec.configs,
            spec.grid_configs,
            spec.cpu_config,
        )
        spec.memo[key] = cfg
    return cfg


def launches_of(spec: PrefillSpec, device, layer, H: int, head_ids=None) -> list:
    """(group, number of heads, int32 tensor of their indices or None for all H) per launch:
    one launch per pattern group of the layer's heads, memoised. head_ids (prefill_at): the
    model's query head of each of the H heads (default: heads 0 .. H - 1)."""
    key = ("launches", str(device), layer, H, None if head_ids is None else tuple(head_ids))
    out = spec.memo.get(key)
    if out is None:
        row = spec.group_table[0 if layer is None else layer]
        row = row if spec.pattern["varies_by_head"] else [row[0]] * H
        if head_ids is not None and spec.pattern["varies_by_head"]:
            row = [row[h] for h in head_ids]
        out = []
        for g in sorted(set(row)):
            heads = [h for h in range(H) if row[h] == g]
            if len(heads) == H:
                out.append((g, H, None))
            else:
                out.append((g, len(heads), table(heads, torch.int32, device)))
        spec.memo[key] = out
    return out


_DUMMIES: dict = {}


def dummies(device) -> tuple:
    """Placeholder tensors (int32, float32) for the pointer arguments a launch does not use."""
    got = _DUMMIES.get(device)
    if got is None:
        got = _DUMMIES[device] = (
            torch.zeros(1, device=device, dtype=torch.int32),
            torch.zeros((1, 1, 1), device=device, dtype=torch.float32),
        )
    return got


def check_prefill_memo(spec: PrefillSpec, where: str, q, k, v, layer, kernel: bool = True, part=None) -> tuple:
    """check_prefill, with its verdict memoised on everything it reads (types, shapes, dtypes,
    devices, last strides, layer, the part of prefill_at, whether the interpreter runs): a call
    like an earlier one that passed costs one tuple and one dict lookup. Anything unusual takes
    the full checks."""
    if (
        type(q) is torch.Tensor
        and type(k) is torch.Tensor
        and type(v) is torch.Tensor
        and (layer is None or type(layer) is int)
        and (part is None or _plain_part(part))
    ):
        key = (
            where,
            q.shape,
            k.shape,
            v.shape,
            q.dtype,
            k.dtype,
            v.dtype,
            q.device,
            k.device,
            v.device,
            q.stride(-1) if q.dim() else 0,
            k.stride(-1) if k.dim() else 0,
            v.stride(-1) if v.dim() else 0,
            layer,
            kernel,
            kernel and q.device.type == "cpu" and interpreting(),
            _part_key(part),
        )
        dims = spec.memo.get(key)
        if dims is None:
            dims = check_prefill(where, spec.pattern, q, k, v, layer, kernel, part)
            _remember(spec, key, dims)
        return dims
    return check_prefill(where, spec.pattern, q, k, v, layer, kernel, part)


def _plain_part(part) -> bool:
    """A part of prefill_at made of plain ints (a memo key can hold it)."""
    q_offset, k_lo, k_hi, heads = part
    listed = heads is None or type(heads) in (list, tuple)
    return listed and all(type(x) is int for x in (q_offset, k_lo, k_hi, *(heads or ())))


def _part_key(part):
    """A part of prefill_at as a memo key (head ids as a tuple); None for a whole prefill."""
    return None if part is None else (*part[:3], None if part[3] is None else tuple(part[3]))


def _remember(spec: PrefillSpec, key, value) -> None:
    """Memoise a verdict or a plan; a memo past 4096 entries (a server seeing ever new prompt
    lengths) starts again."""
    if len(spec.memo) > 4096:
        spec.memo.clear()
    spec.memo[key] = value


def check_lengths(where: str, lengths, B: int, device) -> None:
    """`lengths` of a left-padded batch: an int32 or int64 tensor (B,) on the inputs' device.
    Its values are clamped to [0, N] by the kernel (reading them here would wait for the GPU)."""
    check_tensor(where, "lengths", lengths, dims="B", shape=(B,), dtypes=(torch.int32, torch.int64), device=device)


def _generic_launcher(
    spec,
    cfg,
    grid,
    q,
    k,
    v,
    o,
    heads,
    N,
    H,
    nh,
    D,
    scale,
    group,
    residue,
    return_lse,
    use_tma,
    padded,
    upcast,
    trace,
    span=None,
) -> Callable:
    """run(q, k, v, o, lse, tr, lengths): one launch of the generic kernel with everything that
    does not depend on the data pointers fixed now (strides, grid, constants). span (prefill_at):
    (q offset, k_lo, k_hi) with k_hi <= N, the queries' first position and the keys visited."""
    q_off, k_lo, k_hi = (0, 0, N) if span is None else span
    grid_order, head_group = _head_group(cfg, q.shape[0], nh, N, D, q.element_size())
    extra = {"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}
    kw = dict(
        KV_GROUP=H // k.shape[1], HEAD_DIM=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_N_NARROW=cfg["BLOCK_N_NARROW"], GROUP=group, SUBSET=heads is not None, RESIDUE=residue,
        HAS_LSE=return_lse, USE_TMA=use_tma, PADDED=padded, SEL_BLOCK=spec.select_block,
        HAS_SEL=bool(spec.tuning[group].get("select")), GRID_ORDER=grid_order, HEAD_GROUP=head_group,
        STAGES=cfg["STAGES"], EDGE_STAGES=cfg["EDGE_STAGES"], WARP_SPEC=cfg.get("WARP_SPEC", False),
        DOT_PREC=cfg["DOT_PREC"], UPCAST=upcast, TRACE=trace, KEY_RANGE=(k_lo, k_hi) != (0, N),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **extra,
    )  # fmt: skip
    scalars = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3])
    tail = (N, H, nh, scale * _LOG2E, q_off, q.shape[2], k_lo, k_hi)
    launch = FastLaunch(spec.kernel, grid, kw)
    if use_tma == 2:
        rows_m, rows_n = [1, 1, cfg["BLOCK_M"], D], [1, 1, cfg["BLOCK_N"], D]
        q_shape, kv_shape = list(q.shape), list(k.shape)  # host-side descriptors over all of each tensor
        q_st, k_st, v_st, o_st = list(q.stride()), list(k.stride()), list(v.stride()), list(o.stride())

    # pointers the kernel does not read here go as None (a constexpr to Triton, nothing for its
    # launcher to resolve): the descriptor slots without host-side descriptors, HEADS for all
    # heads, TR outside a trace, LENS for an unpadded batch, the selection without one
    has_sel, no_descs, no_sel = kw["HAS_SEL"], (None,) * 4, (None, None, 0, 0)

    def arguments(descs, q, k, v, o, lse, tr, lengths, chosen) -> tuple:
        """The kernel's positional arguments: the descriptors' places (0-3), q, k, v, o, lse
        (4-8), then what the plan fixes (tr and lengths only where read) and the selection."""
        return (*descs, q, k, v, o, lse, heads, tr if trace else None, lengths if padded else None, *scalars,
                *lse.stride()[:2], *tail, *chosen)  # fmt: skip

    def run(q, k, v, o, lse, tr, lengths, sel=None):
        if sel is None:
            if has_sel:
                raise ValueError("prefill: this pattern selects key blocks at run time: pass indices=select(q, k)")
            chosen = no_sel
        else:
            chosen = (sel[0], sel[1], sel[0].shape[-1], sel[0].shape[-2])
        if use_tma == 2 and launch.describes:  # the raw launch describes them as at the first launch
            descs = (q, k, v, o)
        elif use_tma == 2:
            descs = (
                _descriptor(q, q_shape, q_st, rows_m),
                _descriptor(k, kv_shape, k_st, rows_n),
                _descriptor(v, kv_shape, v_st, rows_n),
                _descriptor(o, q_shape, o_st, rows_m),
            )
        else:
            descs = no_descs
        return launch(*arguments(descs, q, k, v, o, lse, tr, lengths, chosen))

    def bind(q, k, v, o, lse):
        """go(q, k, v, o, lse) -> bool: run() of a whole prefill with these tensors' shapes and
        strides and everything else fixed (FastLaunch.bound), or None (padded, selecting or
        traced launches, or a launch not bound to a raw one)."""
        if padded or has_sel or trace or (use_tma == 2 and not launch.describes):
            return None
        descs = (q, k, v, o) if use_tma == 2 else no_descs
        args = arguments(descs, q, k, v, o, lse, None, None, no_sel)
        go = launch.bound(args, (0, 1, 2, 3, 4, 5, 6, 7, 8) if use_tma == 2 else (4, 5, 6, 7, 8))
        if go is None or use_tma != 2:
            return go
        return lambda q, k, v, o, lse: go(q, k, v, o, q, k, v, o, lse)

    run.bind = bind
    return run


def grid_programs(spec: PrefillSpec, group: int, cfg: dict) -> tuple:
    """(query tiles, prefix blocks) of a grid group's launch."""
    dims, prefix, _ = spec.grid_shape[group]
    q_tile, _ = spec.grid_tiles[group][(cfg["BLOCK_M"], cfg["BLOCK_N"])]
    return tile_count(dims, q_tile), -(-prefix // cfg["BLOCK_M"])


def tile_count(dims, tile) -> int:
    """How many tiles of `tile` tokens per axis cover a grid of `dims` (the last may hang over)."""
    count = 1
    for n, t in zip(dims, tile):
        count *= -(-n // t)
    return count


def tile_args(q_tile, k_tile) -> dict:
    """The grid kernels' tile shapes as constexpr arguments TQ0, TQ1, ..., TK0, TK1, ..."""
    args = {f"TQ{a}": t for a, t in enumerate(q_tile)}
    args.update({f"TK{a}": t for a, t in enumerate(k_tile)})
    return args


def grid_fits(spec: PrefillSpec, group: int, N: int, cfg: dict) -> bool:
    """The tile-order kernel covers prefix + grid tokens exactly, with the tile sizes the compiler
    planned for; other lengths and tiles run the generic kernel."""
    _, prefix, size = spec.grid_shape[group]
    return N == prefix + size and (cfg["BLOCK_M"], cfg["BLOCK_N"]) in spec.grid_tiles[group]


def grid_view(spec: PrefillSpec, group: int, t):
    """(base tensor, shape, strides) of t's grid rows as (batch * heads, *grid, head_dim), or None
    when its layout cannot be addressed that way (heads not evenly spaced)."""
    dims, prefix, _ = spec.grid_shape[group]
    B, H, N, D = t.shape
    if t.stride(0) != H * t.stride(1) and B > 1:
        return None
    strides, size = [], 1
    for n in reversed(dims):
        strides.append(size * t.stride(2))
        size *= n
    return t[:, :, prefix:], [B * H, *dims, D], [t.stride(1), *reversed(strides), 1]


def grid_tma_views(spec: PrefillSpec, group: int, q, k, v, o):
    """The grid views of q, k, v, o (see grid_view), or None unless all four can be TMA
    descriptors: 16-byte aligned bases and strides, a contiguous last dimension."""
    views = []
    for t in (q, k, v, o):
        view = grid_view(spec, group, t)
        if view is None or t.stride(-1) != 1:
            return None
        base, _, strides = view
        if base.data_ptr() % 16 or any((s * t.element_size()) % 16 for s in strides[:-1]):
            return None
        views.append(view)
    return views


def _grid_launcher(spec, group, cfg, q, k, v, o, heads, nh, D, scale, return_lse, upcast, trace) -> Callable:
    """run(q, k, v, o, lse, tr, lengths): one launch of a grid group's tile-order kernel (one
    program per query tile, then per prefix block); TMA boxes of the grid on Hopper."""
    views = grid_tma_views(spec, group, q, k, v, o)
    use_tma = bool(cfg.get("USE_TMA")) and not trace and views is not None
    tiles = spec.grid_tiles[group]
    if cfg.get("USE_TMA") and not use_tma and cfg["BLOCK_N"] > 32 and (cfg["BLOCK_M"], 32) in tiles:
        cfg = dict(cfg, BLOCK_N=32)  # gathered rows: 64-key tiles spill registers (compiler/configs.py)
    q_tile, k_tile = tiles[(cfg["BLOCK_M"], cfg["BLOCK_N"])]
    n_tiles, prefix_blocks = grid_programs(spec, group, cfg)
    B, N = q.shape[0], q.shape[2]
    kw = tile_args(q_tile, k_tile)
    kw.update(
        KV_GROUP=q.shape[1] // k.shape[1], HEAD_DIM=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        SUBSET=heads is not None, HAS_LSE=return_lse, STAGES=cfg["STAGES"], DOT_PREC=cfg["DOT_PREC"],
        UPCAST=upcast, TRACE=trace, USE_TMA=use_tma, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    launch = FastLaunch(spec.grid_kernels[group], (n_tiles + prefix_blocks, B * nh), kw)
    scalars = (q.shape[1], k.shape[1], *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3])
    prefix = spec.grid_shape[group][1]
    boxes = [(shape, strides, [1, *tile, shape[-1]]) for (_, shape, strides), tile in
             zip(views or (), (q_tile, k_tile, k_tile, q_tile))]  # fmt: skip

    def run(q, k, v, o, lse, tr, lengths, sel=None):
        if use_tma:  # the grid rows start after the prefix: the views' shapes and strides are the plan's
            views = [t[:, :, prefix:] if prefix else t for t in (q, k, v, o)]
            # the raw launch describes bare views as at the first launch (as _generic_launcher's)
            descs = views if launch.describes else [_descriptor(t, *box) for t, box in zip(views, boxes)]
        else:
            descs = (q, k, v, o)
        return launch(q, k, v, o, *descs, lse, tr if heads is None else heads, tr, *scalars, *lse.stride()[:2],
                      N, nh, scale * _LOG2E)  # fmt: skip

    return run


def _plan(spec, q, k, v, o, lse, N, H, D, scale, return_lse, layer, config, trace, padded, part=None) -> list:
    """The launches of one call: (group, config, run) per pattern group of the layer's heads
    (one launch per group: a run-time branch between groups inside one kernel measured 2x
    slower on an H100, docs/codegen.md). part (prefill_at): (q offset, k_lo, k_hi, head ids);
    a part other than all queries and keys runs the generic kernel, without residue classes."""
    upcast = q.dtype == torch.bfloat16 and q.device.type == "cpu"  # interpreter: see _attend
    span = (0, 0, N) if part is None else (part[0], part[1], min(part[2], N))
    whole = span == (0, 0, N) and q.shape[2] == N  # heads only: residue classes and grid order still apply
    plan = []
    for group, nh, heads in launches_of(spec, q.device, layer, H, None if part is None else part[3]):
        cfg = config_of(spec, q.device, q.dtype, D, config, group)
        if part is not None:
            check_key_tile("prefill_at", part[1], part[2], N, cfg["BLOCK_N"])
        if hopper_ok(q, N, cfg.get("HOPPER", 0)) and not (trace or padded) and whole:
            head_group = _head_group(cfg, q.shape[0], nh, N, D, q.element_size())[1]
            run = hopper_launcher(q, k, v, o, heads, nh, H, spec.tuning[group]["band"], scale, return_lse, head_group)
            if run is not None:
                plan.append((group, cfg, run))
                continue
        selects = spec.tuning[group].get("select")
        if selects and (spec.select_block % cfg["BLOCK_M"] or spec.select_block % cfg["BLOCK_N"]):
            raise ValueError(
                f"prefill: tiles {cfg['BLOCK_M']} x {cfg['BLOCK_N']} must divide the selection block {spec.select_block}"
            )
        if (
            not selects
            and spec.tuning[group]["grid"]
            and cfg.get("GRID", True)
            and not (trace or padded)
            and whole
            and grid_fits(spec, group, N, cfg)
        ):
            run = _grid_launcher(spec, group, cfg, q, k, v, o, heads, nh, D, scale, return_lse, upcast, False)
            plan.append((group, cfg, run))
            continue
        residue = spec.tuning[group]["residue"] if cfg.get("RESIDUE", True) and not trace and whole else 0
        split = split_at(spec.tuning[group], N) if cfg.get("RESIDUE", True) and not trace and whole else 0
        if split:  # two launches, the second merging into the first's output and LSE (lse: see forward)
            # the classes' launch reads through pointers and spills under the register cap (sm_90 build)
            for part, part_cfg in ((-split, cfg), (split, dict(cfg, maxnreg=None))):
                grid_m = cdiv(q.shape[2], cfg["BLOCK_M"])
                if part > 0:
                    grid_m = split * cdiv(cdiv(N, split), cfg["BLOCK_M"])
                use_tma = cfg["USE_TMA"] if part < 0 and not padded and _tma_ok(q, k, v, o) else 0
                run = _generic_launcher(spec, part_cfg, (grid_m, q.shape[0] * nh), q, k, v, o, heads, N, H, nh, D,
                                        scale, group, part, True, use_tma, padded, upcast, trace, span)  # fmt: skip
                plan.append((group, part_cfg, run))
            continue
        # host-side descriptors address whole rows of (B, H, N, D): not the strided rows of
        # residue classes, nor the shifted rows of padded batches
        use_tma = cfg["USE_TMA"] if not (trace or residue or padded) and _tma_ok(q, k, v, o) else 0
        grid_m = cdiv(q.shape[2], cfg["BLOCK_M"])
        if residue:
            grid_m = residue * cdiv(cdiv(N, residue), cfg["BLOCK_M"])
        run = _generic_launcher(spec, cfg, (grid_m, q.shape[0] * nh), q, k, v, o, heads, N, H, nh, D, scale, group,
                                residue, return_lse, use_tma, padded, upcast, trace, span)  # fmt: skip
        plan.append((group, cfg, run))
    return plan


def split_at(tuning: dict, n: int) -> int:
    """m when a group of this tuning runs as split launches at n keys (classes q mod m of at
    least the plan's split_from / m rows), else 0: shorter classes run the one-launch plan."""
    return tuning.get("split", 0) if n >= tuning.get("split_from", 0) else 0


def _run_first(spec, plan, args, rebuild) -> bool:
    """Run a plan's launches the first time: a kernel that the register cap made spill loses
    the cap, and a launch out of shared memory retries with shallower pipelining (both
    remembered in the memoised configuration). True when no configuration changed."""
    stable = True
    for i, (_, cfg, run) in enumerate(plan):
        for attempt in range(3):
            try:
                kernel = run(*args)
                if cfg.get("maxnreg") and getattr(kernel, "n_spills", 0) > _SPILL_LIMIT:
                    cfg["maxnreg"] = None  # the register cap (two programs per SM) made this kernel spill
                    stable = False
                break
            except _OutOfResources:
                if attempt == 2 or cfg["num_stages"] <= 1:
                    raise
                cfg.update(
                    num_stages=cfg["num_stages"] - 1, STAGES=max(1, cfg["STAGES"] - 1), EDGE_STAGES=1, maxnreg=None
                )
                stable = False
                run = rebuild()[i][2]
    return stable


def forward(
    spec: PrefillSpec,
    q,
    k,
    v,
    scale,
    return_lse,
    layer,
    config=None,
    trace=False,
    lengths=None,
    dims=None,
    sel=None,
    part=None,
):
    """Launch the prefill kernels without the custom-op wrapper: (out, lse or an empty tensor[, trace]).

    `lengths` (B,): a left-padded batch, row b's tokens are its last lengths[b] positions,
    which the pattern numbers from 0; the padding rows of the output are zeros (lse -inf).
    `dims`: the caller has checked every argument (prefill()) and passes (B, H, H_KV, N, D).
    `sel`: (indices, counts) of the chosen key blocks, checked, for a pattern that selects.
    out_layout: the output has q's strides (torch.empty_like keeps a dense tensor's), as SDPA's
    output does: a model whose q is a (B, N, H, D) projection viewed as (B, H, N, D) gets an
    output that `o.transpose(1, 2).reshape(B, N, H * D)` views without a copy.
    `part` (prefill_at, neither lengths nor sel): (q_offset, k_lo, k_hi, head_ids): the
    queries of q at positions q_offset .. of the N keys of k and v, the keys [k_lo, k_hi)
    only, the model's query heads head_ids (None: all)."""
    padded = lengths is not None
    if dims is None:
        dims = check_prefill_memo(spec, "prefill", q, k, v, layer, part=part)
        scale = check_scale("prefill", scale, dims[4])
        if padded:
            check_lengths("prefill", lengths, dims[0], q.device)
    B, H, H_KV, N, D = dims
    NQ = q.shape[2]
    o = (torch.zeros_like if padded else torch.empty_like)(q)  # in q's layout (out_layout)
    lse = q.new_empty((B, H, NQ) if return_lse else (0,), dtype=torch.float32)
    if padded and return_lse:
        lse.fill_(float("-inf"))
    if B * H * NQ == 0:
        return (o, lse, None) if trace else (o, lse)
    dummy_i32, dummy_f32 = dummies(q.device)
    merge = not (return_lse or trace) and _merges(spec, N)
    lse_arg = q.new_empty((B, H, NQ), dtype=torch.float32) if merge else lse if return_lse else dummy_f32
    lens_arg = lengths if padded else dummy_i32
    if trace:
        # the trace has one row per query block: every group must use the same BLOCK_M (tests pass it)
        group0 = launches_of(spec, q.device, layer, H, None if part is None else part[3])[0][0]
        num_m = cdiv(NQ, config_of(spec, q.device, q.dtype, D, config, group0)["BLOCK_M"])
        tr = torch.zeros(B * H * num_m * N, device=q.device, dtype=torch.int32)
        plan = _plan(spec, q, k, v, o, lse, N, H, D, scale, return_lse, layer, config, True, padded, part)
        _run_first(spec, plan, (q, k, v, o, lse_arg, tr, lens_arg, sel), lambda: plan)
        return o, lse, tr.view(B, H, num_m, N)
    key = None if config is not None else plan_key(q, k, v, layer, scale, return_lse, lengths, sel, part)
    hit = spec.memo.get(key) if key is not None else None
    if hit is not None:
        for run in hit.runs:
            run(q, k, v, o, lse_arg, dummy_i32, lens_arg, sel)
        return o, lse

    def build():
        return _plan(spec, q, k, v, o, lse, N, H, D, scale, return_lse, layer, config, False, padded, part)

    plan = build()
    if _run_first(spec, plan, (q, k, v, o, lse_arg, dummy_i32, lens_arg, sel), build) and key is not None:
        _remember(spec, key, Memoised(tuple(run for _, _, run in plan), merge, dummy_i32, dummy_f32))
    return o, lse


class Memoised(NamedTuple):
    """A remembered call (the memo's value under its plan_key): its launches, and what else
    the key fixes: whether a call that returns no LSE needs a buffer to merge split launches
    through, and the device's placeholder tensors."""

    runs: tuple
    merge: bool
    dummy_i32: torch.Tensor
    dummy_f32: torch.Tensor
    bound: tuple | None = None  # the runs bound to their launches (an unpadded call), once built


def plan_key(q, k, v, layer, scale: float, return_lse, lengths, sel, part):
    """The memo key of a call's launch plan, or None when a call cannot have one (inputs not
    16-byte aligned, arguments of unusual types). It holds everything the checks, the plan
    and the kernels' specialisation read: shapes, strides, dtypes and devices of q, k, v; the
    layer, the scale, return_lse, the part of prefill_at; of `lengths` and of the selection's
    tensors their shape, dtype, device and alignment. A plan is remembered only after the
    full checks passed, so a hit stands for them."""
    if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15 or (layer is not None and type(layer) is not int):
        return None
    if lengths is None and sel is None and part is None:  # a whole prefill: the common case, built at once
        return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
                q.device, k.device, v.device, layer, scale, bool(return_lse))  # fmt: skip
    extra = []
    for t in (lengths, *(sel or ())):
        if t is not None:
            if type(t) is not torch.Tensor:
                return None
            extra.append((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15 == 0))
    if part is not None and not _plain_part(part):
        return None
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            k.device, v.device, layer, scale, bool(return_lse), lengths is not None, sel is not None, *extra,
            _part_key(part))  # fmt: skip


def prefill_fast(spec: PrefillSpec, q, k, v, scale, return_lse, layer, lengths):
    """prefill's common case in one memo lookup: an eager call (no autograd, no torch.compile,
    no selection) like an earlier one gets its output from the remembered plan; None when
    the call must take the full path (which remembers the plan for the next)."""
    if (
        type(q) is not torch.Tensor
        or type(k) is not torch.Tensor
        or type(v) is not torch.Tensor
        or q.dim() != 4
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    ):
        return None
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    elif type(scale) is not float:
        return None
    key = plan_key(q, k, v, layer, scale, return_lse, lengths, None, None)
    hit = spec.memo.get(key) if key is not None else None
    if hit is None:
        return None
    o = (torch.empty_like if lengths is None else torch.zeros_like)(q)
    if return_lse or hit.merge:  # the LSE asked for, or the split launches' merge buffer
        lse = q.new_empty(q.shape[:3], dtype=torch.float32)  # new_empty: less host time than torch.empty
        if return_lse and lengths is not None:
            lse.fill_(float("-inf"))
    else:
        lse = hit.dummy_f32
    if lengths is None and _bound_runs(spec, key, hit, q, k, v, o, lse):
        return (o, lse) if return_lse else o
    for run in hit.runs:
        run(q, k, v, o, lse, hit.dummy_i32, lengths, None)
    return (o, lse) if return_lse else o


def _bound_runs(spec: PrefillSpec, key, hit: Memoised, q, k, v, o, lse) -> bool:
    """Launch a remembered unpadded call's runs through their bound launches (built at its
    first such call and remembered with it); False where they cannot (the caller runs them)."""
    gos = hit.bound
    if gos is None:
        gos = tuple(getattr(run, "bind", lambda *a: None)(q, k, v, o, lse) for run in hit.runs)
        gos = gos if all(gos) else ()
        spec.memo[key] = hit._replace(bound=gos)
    if not gos or not gos[0](q, k, v, o, lse):  # the first checks the device and hooks for all
        return False
    for go in gos[1:]:
        go(q, k, v, o, lse)
    return True


def _merges(spec: PrefillSpec, N: int) -> bool:
    """A call at N keys that returns no LSE still needs an LSE buffer: a group runs split
    launches there (the second launch merges through the first's LSE)."""
    return any(split_at(tuning, N) for tuning in spec.tuning)


def grid_visits_of(spec: PrefillSpec, q, k, v, layer=None, config=None) -> list:
    """Per grid group of the layer: (group, visits) with visits[b * heads + i, program, key] the
    number of times the tile-order kernel's program visits each key (natural positions),
    computing nothing: a test hook for the plan."""
    B, H, H_KV, N, D = check_prefill_memo(spec, "prefill", q, k, v, layer)
    out = []
    for group, nh, heads in launches_of(spec, q.device, layer, H):
        if spec.grid_kernels[group] is None:
            continue
        cfg = config_of(spec, q.device, q.dtype, D, config, group)
        tiles, prefix_blocks = grid_programs(spec, group, cfg)
        tr = torch.zeros(B * nh * (tiles + prefix_blocks) * N, device=q.device, dtype=torch.int32)
        run = _grid_launcher(spec, group, cfg, q, k, v, q, heads, nh, D, 1.0, False, False, True)
        run(q, k, v, q, dummies(q.device)[1], tr, None)
        out.append((group, tr.view(B * nh, tiles + prefix_blocks, N)))
    return out

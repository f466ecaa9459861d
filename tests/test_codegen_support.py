"""Shared helpers of the codegen tests: build programs by hand, load their modules, check them.

No tests here. The independent reference is attention with the dense boolean mask of
`compiler.ir.Pattern.mask`, computed in float64 torch; it shares nothing with the
generated code but the IR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from attnc.codegen.writer import write_module
from attnc.compiler.ir import HeadGroup, ModelShape, Pattern, Program
from attnc.compiler.lower import lower_expr
from attnc.loader import import_file
from tests.cases import ONE_D

_DIR = Path(tempfile.mkdtemp(prefix="attnc-codegen-tests-"))
_MODULES: dict[str, object] = {}


def as_pattern(x) -> Pattern:
    return x if isinstance(x, Pattern) else lower_expr(x)


def single(expr, name: str = "p") -> Program:
    """A program with one pattern for every head (any head count works)."""
    return Program(
        name=name, source=f"{name}.attn", model=ModelShape(), groups=(HeadGroup(as_pattern(expr), frozenset({(0, 0)})),)
    )


def grouped(table: list[list[object]], name: str = "g", kv_heads: int | None = None) -> Program:
    """A program from an expression per [layer][head] (equal expressions share a group)."""
    layers, heads = len(table), len(table[0])
    groups: dict[Pattern, set] = {}
    for l, row in enumerate(table):
        for h, expr in enumerate(row):
            groups.setdefault(as_pattern(expr), set()).add((l, h))
    ordered = sorted(groups.items(), key=lambda kv: min(kv[1]))
    return Program(
        name=name,
        source=f"{name}.attn",
        model=ModelShape(layers=layers, heads=heads, kv_heads=kv_heads or heads),
        groups=tuple(HeadGroup(p, frozenset(m)) for p, m in ordered),
    )


def load(program: Program):
    """Write the program's module into a temporary folder and import it (once per digest)."""
    key = program.digest()
    if key not in _MODULES:
        path = write_module(program, _DIR / key)
        _MODULES[key] = import_file(path, f"attnc_test_{program.name}_{key}")
    return _MODULES[key]


def head_masks(program: Program, n: int, heads: int, layer: int | None = None) -> torch.Tensor:
    """(heads, n, n) bool: each query head's dense mask, from the IR."""
    varies = any(len(set(row)) > 1 for row in program.group_table())
    row = program.group_table()[layer or 0]
    out = []
    for h in range(heads):
        g = row[h] if varies else row[0]
        out.append(torch.from_numpy(program.groups[g].pattern.mask(n)))
    return torch.stack(out)


def selection_masks(program: Program, n: int, heads: int, h_kv: int, layer, indices, counts) -> torch.Tensor:
    """(B, heads, n, n) bool: the pairs the chosen key blocks add to each query head, from the
    IR (`Selection.holds` on the chosen blocks of the head's KV head)."""
    varies = any(len(set(row)) > 1 for row in program.group_table())
    row = program.group_table()[layer or 0]
    pos = np.arange(n)[:, None], np.arange(n)[None, :]
    out = torch.zeros((indices.shape[0], heads, n, n), dtype=torch.bool)
    for b in range(indices.shape[0]):
        for h in range(heads):
            sel = program.groups[row[h] if varies else row[0]].selection
            if sel is None:
                continue
            nb = -(-n // sel.atom.block)
            chosen = np.zeros((nb, nb), dtype=bool)
            kv = h // (heads // h_kv)
            for i in range(nb):
                chosen[i, indices[b, kv, i, : counts[b, kv, i]].numpy()] = True
            out[b, h] = torch.from_numpy(np.asarray(sel.holds(*pos, chosen)))
    return out


def dense_reference(q, k, v, masks: torch.Tensor, scale: float | None = None):
    """float64 attention with a dense (H, N, N) mask; empty rows give 0 and lse -inf."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    g = q.shape[1] // k.shape[1]
    qf, kf, vf = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~(masks if masks.dim() == 4 else masks[None]).to(s.device), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return p @ vf, lse


def inputs(b: int, h: int, h_kv: int, n: int, d: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, hh, n, d, generator=gen).to(dtype) for hh in (h, h_kv, h_kv))


def assert_close(out, ref, dtype):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite output"
    if dtype == torch.float32:
        err = (out - ref).abs().max().item()
        assert err < 1e-4, f"max abs error {err:.3g}"
    else:
        err = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        assert err < 1e-2, f"relative error {err:.3g}"


def check_module(
    program: Program,
    n: int,
    *,
    b: int = 1,
    h: int = 2,
    h_kv: int = 1,
    d: int = 16,
    dtype=torch.float32,
    layer: int | None = None,
    config: dict | None = None,
    seed: int = 0,
):
    """Run the generated kernel on random inputs and compare with the independent reference."""
    mod = load(program)
    q, k, v = inputs(b, h, h_kv, n, d, dtype, seed)
    sel = mod.select(q, k, layer=layer) if mod.PATTERN["selects"] else None
    out, lse = mod._forward(q, k, v, None, True, layer, config=config, sel=sel)
    masks = head_masks(program, n, h, layer)
    if sel is not None:
        masks = masks | selection_masks(program, n, h, h_kv, layer, *sel)
    ref, ref_lse = dense_reference(q, k, v, masks)
    assert_close(out, ref, dtype)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse must be -inf exactly on rows without keys"
    if finite.any():
        assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() < 1e-3
    assert (out[~finite] == 0).all(), "rows without an allowed key must be exactly zero"
    return mod, out, ref


_VISITS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def visits(program: Program, n: int, config: dict, heads: int = 1, layer: int | None = None):
    """(masked, unmasked) visit counts per (head, query block, key) from the kernel's TRACE mode.

    The trace depends only on its arguments, so each distinct launch runs once per session
    (the arrays are shared: read them, never write)."""
    key = (program.digest(), n, tuple(sorted(config.items())), heads, layer)
    if key not in _VISITS:
        mod = load(program)
        x = torch.zeros(1, heads, max(n, 1), 16)[:, :, :n]
        _, _, tr = mod._forward(x, x, x, None, False, layer, config=config, trace=True)
        tr = tr[0].numpy()
        masked, unmasked = tr & 255, tr >> 8
        masked.flags.writeable = unmasked.flags.writeable = False
        _VISITS[key] = masked, unmasked
    return _VISITS[key]


def check_visits(program: Program, n: int, config: dict, heads: int = 1, layer: int | None = None) -> int:
    """Every key that a query block needs is visited exactly once, unmasked only where all pairs
    are allowed; returns how many (block, key) visits were wasted on keys no row needs."""
    masked, unmasked = visits(program, n, config, heads, layer)
    masks = head_masks(program, n, heads, layer).numpy()
    bm = config["BLOCK_M"]
    wasted = 0
    for hh in range(heads):
        for i in range(masked.shape[1]):
            rows = masks[hh, i * bm : (i + 1) * bm]
            need, full = rows.any(0), rows.all(0)
            seen = masked[hh, i] + unmasked[hh, i]
            assert (seen <= 1).all(), f"head {hh} block {i}: keys visited twice: {np.flatnonzero(seen > 1)}"
            assert (seen[need] == 1).all(), (
                f"head {hh} block {i}: needed keys missed: {np.flatnonzero(need & (seen == 0))}"
            )
            bad = (unmasked[hh, i] > 0) & ~full
            assert not bad.any(), f"head {hh} block {i}: unmasked keys not allowed for every row: {np.flatnonzero(bad)}"
            wasted += int((seen[~need] > 0).sum())
    return wasted


EXPRS = {c.name: c.pattern for c in ONE_D}  # the 1-D cases of the shared matrix, by name


def tile_visits(program: Program, n: int, config: dict, heads: int = 1, layer: int | None = None) -> np.ndarray:
    """Per (head, query block, key block of BLOCK_N): 0 not visited, 1 masked, 2 unmasked.

    Needs BLOCK_N_NARROW == BLOCK_N in config, so that every visit covers whole key blocks.
    """
    masked, unmasked = visits(program, n, config, heads, layer)
    bn = config["BLOCK_N"]
    nkb = -(-n // bn)
    out = np.zeros(masked.shape[:2] + (nkb,), dtype=np.int8)
    for j in range(nkb):
        m = masked[..., j * bn : (j + 1) * bn]
        u = unmasked[..., j * bn : (j + 1) * bn]
        assert ((m.min(-1) == m.max(-1)) & (u.min(-1) == u.max(-1))).all(), "a tile visited in part"
        out[..., j] = np.where(u[..., 0] > 0, 2, np.where(m[..., 0] > 0, 1, 0))
    return out


_GPU_COMPILE = r"""
import importlib.util, json, os, re, subprocess, sys, tempfile
import triton
from attnc.codegen.importing import import_module_from_path
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def signature_of(names, dtype, tensors, boxes, ints):
    # Triton's signature of a generated kernel: host-side descriptors (name -> box), tensors
    # of the input dtype, LSE, the int32 tables, int32 scalars and strides; the rest constexpr
    signature = {}
    for name in names:
        if name in boxes:
            signature[name] = f"tensordesc<{dtype}[{','.join(map(str, boxes[name]))}]>"
        elif name in tensors:
            signature[name] = "*" + dtype
        elif name == "LSE":
            signature[name] = "*fp32"
        elif name in ("HEADS", "TR", "LENS"):
            signature[name] = "*i32"
        elif name == "qk_scale":
            signature[name] = "fp32"
        elif name.startswith("stride") or name in ints:
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    return signature


def usage(kernel, cfg):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return {"shared": kernel.metadata.shared, "regs": int(m.group(1)) if m else -1,
            "stack": int(m.group(2)) if m else -1, "maxnreg": cfg.get("maxnreg")}


def compile_grid(mod, opts):
    # a grid group's tile-order kernel (grid.py.j2) at its Hopper configuration
    dtype, head_dim, group = opts["dtype"], opts["head_dim"], opts["group"]
    cfg = dict(next(c for (cap, k, d, c) in mod.GRID_CONFIGS + mod.CONFIGS
                    if k == "16bit" and d in (None, head_dim) and cap[0] * 10 <= opts["capability"]))
    cfg.update(opts["config"])
    q_tile, k_tile = mod._GRID_TILES[group][(cfg["BLOCK_M"], cfg["BLOCK_N"])]
    use_tma = bool(cfg.get("USE_TMA")) and opts["use_tma"]
    fn = mod._GRID_KERNELS[group]
    boxes = {}
    if use_tma:
        boxes = {n: [1, *(k_tile if n in ("K_desc", "V_desc") else q_tile), head_dim]
                 for n in ("Q_desc", "K_desc", "V_desc", "O_desc")}
    signature = signature_of(fn.arg_names, dtype, ("Q", "K", "V", "O", "Q_desc", "K_desc", "V_desc", "O_desc"),
                             boxes, ("N", "NH", "HQ", "HKV"))
    constexprs = dict(KV_GROUP=2, HEAD_DIM=head_dim, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      SUBSET=opts["subset"], HAS_LSE=True, STAGES=cfg["STAGES"], DOT_PREC="tf32", UPCAST=False,
                      TRACE=False, USE_TMA=use_tma)
    constexprs.update({f"TQ{a}": t for a, t in enumerate(q_tile)})
    constexprs.update({f"TK{a}": t for a, t in enumerate(k_tile)})
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", opts["capability"], 32),
                            options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
    return usage(kernel, cfg)


def compile_one(path, opts):
    mod = import_module_from_path(path, "generated_" + re.sub(r"\W", "_", str(path)))
    if opts.get("grid"):
        return compile_grid(mod, opts)
    dtype, head_dim = opts["dtype"], opts["head_dim"]
    kind = "fp32" if dtype == "fp32" else "16bit"
    cfg = dict(next(c for (cap, k, d, c) in mod.CONFIGS
                    if k == kind and d in (None, head_dim) and cap[0] * 10 <= opts["capability"]))
    tune = mod._TUNING[opts["group"]]
    rows = min(x for x in (tune["block_cap"], tune["rows_cap"], cfg["BLOCK_M"]) if x is not None)
    if tune["block_cap"]:
        cfg["BLOCK_N"] = min(cfg["BLOCK_N"], tune["block_cap"])
    if rows < cfg["BLOCK_M"]:
        cfg["BLOCK_M"] = rows
        if rows <= 64:
            cfg["num_warps"], cfg["maxnreg"] = min(cfg["num_warps"], 4), None
    cfg.update(opts["config"])
    narrow = 16
    while narrow < tune["narrow"]:
        narrow *= 2
    use_tma = cfg["USE_TMA"] if opts["use_tma"] and opts["residue"] <= 0 else 0  # classes: pointers
    names = mod._fwd_kernel.arg_names
    boxes = {}
    if use_tma == 2:
        boxes = {n: [1, 1, cfg["BLOCK_N"] if n in ("K", "V") else cfg["BLOCK_M"], head_dim] for n in ("Q", "K", "V", "O")}
    # as the host launches it: None (a constexpr) for the descriptor slots without host-side
    # descriptors, HEADS for all heads, TR and LENS
    signature = signature_of(names, dtype, ("Q", "K", "V", "O", "Q_ptr", "K_ptr", "V_ptr", "O_ptr"), boxes,
                             ("N", "H", "NH", "Q_OFF", "NQ", "K_LO", "K_HI"))
    unused = ["TR", "LENS"] + ([] if use_tma == 2 else ["Q", "K", "V", "O"]) + ([] if opts["subset"] else ["HEADS"])
    signature.update(dict.fromkeys(unused, "constexpr"))
    constexprs = dict(KV_GROUP=2, HEAD_DIM=head_dim, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      BLOCK_N_NARROW=min(narrow, cfg["BLOCK_N"]), GROUP=opts["group"], SUBSET=opts["subset"],
                      RESIDUE=opts["residue"], HAS_LSE=True, USE_TMA=use_tma, PADDED=False, GRID_ORDER=3, HEAD_GROUP=4,
                      STAGES=cfg["STAGES"], EDGE_STAGES=cfg["EDGE_STAGES"], WARP_SPEC=cfg["WARP_SPEC"],
                      DOT_PREC="ieee" if dtype == "fp32" else "tf32", UPCAST=False, TRACE=False, KEY_RANGE=False)
    div16 = ["Q_ptr", "K_ptr", "V_ptr", "O_ptr", "LSE", "N"] + [n for n in names if n.startswith("stride_")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16}
    options = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("maxnreg"):
        options["maxnreg"] = cfg["maxnreg"]
    kernel = triton.compile(ASTSource(fn=mod._fwd_kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", opts["capability"], 32), options=options)
    return usage(kernel, cfg)


print(json.dumps([compile_one(path, opts) for path, opts in json.loads(sys.argv[1])]))
"""


def gpu_case(
    program: Program,
    *,
    dtype: str = "bf16",
    head_dim: int = 128,
    use_tma: bool = True,
    group: int = 0,
    subset: bool = False,
    capability: int = 90,
    config: dict | None = None,
    residue: int = 0,
    grid: bool = False,
) -> tuple[str, dict]:
    """One kernel for compile_for_gpu: the module's path and the launch options (`grid`: the
    group's tile-order kernel instead of the generic one)."""
    path = write_module(program, _DIR / program.digest())
    return str(path), dict(
        dtype=dtype,
        head_dim=head_dim,
        use_tma=use_tma,
        group=group,
        subset=subset,
        residue=residue,
        capability=capability,
        config=config or {},
        grid=grid,
    )


def compile_for_gpu(cases: list[tuple[str, dict]]) -> list[dict]:
    """Compile generated kernels for an NVIDIA GPU on this machine (no GPU needed: Triton's own
    ptxas), in one fresh process without TRITON_INTERPRET (the interpreter patches
    triton.language). Catches code that the interpreter accepts but the GPU compiler rejects."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", _GPU_COMPILE, json.dumps(cases)], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, f"GPU compilation failed:\n{res.stderr[-4000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def have_ptxas() -> bool:
    """Whether Triton's own ptxas is installed (GPU compiles on this CPU-only machine)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(90).path is not None
    except Exception:
        return False

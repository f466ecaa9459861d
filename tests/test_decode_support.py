"""Shared helpers of the decode and cache tests (this file holds no tests).

Programs are built straight from IR patterns and CachePolicy records, so the tests do not
depend on the parser; generated modules are rendered once per (program, max_step) into a
temporary folder and imported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attnc.codegen.decode_plan import plan_decode  # noqa: E402
from attnc.codegen.writer import load_decode_module  # noqa: E402
from attnc.compiler.ir import HeadGroup, ModelShape, Pattern, Program  # noqa: E402
from attnc.compiler.lower import lower_expr  # noqa: E402
from attnc.spec.ast import Loc  # noqa: E402
from attnc.spec.resolved import CachePolicy, RBudget, REvict  # noqa: E402
from strategies import op, prim  # noqa: E402

LOC = Loc(file="<test>", line=1, col=1)
_DIR = Path(tempfile.mkdtemp(prefix="attnc_decode_"))
_MODULES: dict = {}


# ------------------------------------------------------------------ patterns


def causal(*alts):
    """causal & (alt1 | alt2 | ...) as an IR pattern; causal alone without alts."""
    if not alts:
        return lower_expr(prim("causal"))
    e = alts[0]
    for a in alts[1:]:
        e = op("|", e, a)
    return lower_expr(op("&", prim("causal"), e))


def sink(s):
    return prim("sink", size=s)


def window(w):
    return prim("window", size=w)


def stride(s, o):
    return prim("stride", stride=s, offset=o)


def chunk(c):
    return prim("chunk", size=c)


def program(per_head, *, layers=1, heads=4, kv_heads=2, head_dim=16, cache=(), name="t"):
    """A Program: per_head is one Pattern for all, a list (one per query head), or a list
    of such lists (one per layer)."""
    if isinstance(per_head, Pattern):
        per_head = [per_head] * heads
    if isinstance(per_head[0], Pattern):
        per_head = [per_head] * layers
    groups: dict[Pattern, set] = {}
    for l, row in enumerate(per_head):
        for h, p in enumerate(row):
            groups.setdefault(p, set()).add((l, h))
    ordered = sorted(groups.items(), key=lambda kv: min(kv[1]))
    return Program(
        name=name,
        source="<test>",
        model=ModelShape(layers, heads, kv_heads, head_dim),
        groups=tuple(HeadGroup(p, frozenset(m)) for p, m in ordered),
        cache=tuple(cache),
    )


def policy(
    budget=None,
    *,
    sink=0,
    recent=0,
    score=None,
    timing=None,
    aggregate="mean",
    positions="original",
    layers=None,
    kv_heads=None,
    **options,
):
    """A CachePolicy record. budget: int, 'full', ('linear', a, b), ('list', [...]), ('adaptive', m)."""
    if budget is None or budget == "full":
        b = RBudget(kind="full")
    elif isinstance(budget, int):
        b = RBudget(kind="tokens", tokens=budget)
    elif budget[0] == "linear":
        b = RBudget(kind="linear", first=budget[1], last=budget[2])
    elif budget[0] == "list":
        b = RBudget(kind="list", per_layer=tuple(budget[1]))
    else:
        b = RBudget(kind="adaptive", tokens=budget[1], by="cake")
    ev = None
    if score is not None:
        defaults = {"snapkv": dict(window=32, pool="max", kernel=7)}.get(score, {})
        defaults.update(options)
        ev = REvict(
            score=score, options=defaults, timing=timing or ("prefill" if score in ("snapkv", "key_norm") else "decode")
        )
    return CachePolicy(
        budget=b,
        sink=sink,
        recent=recent,
        evict=ev,
        aggregate=aggregate,
        positions=positions,
        layers=None if layers is None else tuple(layers),
        kv_heads=None if kv_heads is None else tuple(kv_heads),
        loc=LOC,
    )


def module(prog, max_step=1):
    """The generated standalone decode module of a program (rendered once per process)."""
    key = (prog.digest(), max_step)
    if key not in _MODULES:
        plan = plan_decode(prog, max_step=max_step)
        assert plan is not None, "pattern is not decodable"
        _MODULES[key] = (plan, load_decode_module(plan, _DIR))
    return _MODULES[key]


def checked_steps(start: int, stop: int, period: int = 16, step: int = 1, margin: int = 2) -> frozenset[int]:
    """The steps of range(start, stop, step) at which a step-by-step test decodes and checks
    (it appends at every step): the first two, the last, and every step within `margin` of a
    multiple of `period` (a page or block boundary). The steps between take the path of
    their neighbours on other random inputs, and under the interpreter each costs a launch."""
    steps = range(start, stop, step)
    near = {t for t in steps if min(t % period, period - t % period) <= margin}
    return frozenset({*steps[:2], *steps[-1:], *near})


# ------------------------------------------------------------------ references


def full_mask_attention(prog, layer, q, k, v, scale=None):
    """Prefill attention with the full mask of each query head: the plain torch reference.
    q (B, H, N, D), k, v (B, H_KV, N, D); rows with no allowed key give zeros (float64)."""
    B, H, N, D = q.shape
    G = H // k.shape[1]
    table = prog.group_table()[layer]
    scale = scale or 1.0 / np.sqrt(D)
    out = torch.zeros(B, H, N, D, dtype=torch.float64)
    for h in range(H):
        mask = torch.from_numpy(prog.groups[table[h]].pattern.mask(N))
        s = q[:, h].double() @ k[:, h // G].double().transpose(-1, -2) * scale
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
        out[:, h] = p @ v[:, h // G].double()
    return out


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def liveness_tokens(prog, layer, kv, n):
    """What compiler.liveness says the store of (layer, kv head) holds after n tokens: the
    size formula of its live keys at t = n - 1, plus token n - 1 itself when some query can
    read it."""
    from attnc.compiler.formula import NoFormula
    from attnc.compiler.liveness import cache_layout

    G = prog.model.heads // prog.model.kv_heads
    table = prog.group_table()[layer]
    pats = [prog.groups[g].pattern for g in sorted({table[kv * G + i] for i in range(G)})]
    layout = None
    for p in pats:
        layout = cache_layout(p) if layout is None else layout.union(cache_layout(p))
    t = n - 1
    q = np.arange(t, 5 * t + 256, dtype=np.int64)
    current = any(bool(np.asarray(p.holds(q, np.int64(t))).any()) for p in pats)
    try:
        size = int(layout.size_formula().at(t))  # the closed form in t (sympy)
    except NoFormula:
        size = layout.size_at(t)
    return size + int(current)

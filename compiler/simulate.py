"""Predicted kernel time from the IR alone: `attnc simulate`, and the model bench/calibrate.py fits.

Prefill. A generated module launches its kernel once per head group of a layer, with that
group's configuration (`kernel_config`, its `config_for`), over the group's heads only; the
launches are timed one by one and summed. A launch runs one program per (query block,
batch * head); a group in residue mode runs d classes of dense band tiles. A program
costs a fixed overhead (load Q, write O) plus, per key tile it visits, the cost of a full
(unmasked) or masked BM x BN tile, or of a narrow tile of the sink loop. Which tiles it
visits is what compiler/plan.py plans and the kernel runs, evaluated here on numpy arrays
(`kernel_segments`, a line-by-line mirror of templates/prefill.py.j2's `_visit_g*`); the exact
block map (`block_tiles`) is the ideal it is compared with. Programs are dispatched in grid
order (each goes to the SM slot that frees first: greedy list scheduling); the makespan plus
a launch overhead is the predicted time, and SM time that is not work is idle at the tail.
SDPA (dense causal or full) and FlexAttention (its 128 x 128 block mask) run through the
same machinery with their own tile costs; Flex's is an estimate, not a measurement.

Decode. A step reads the cache each KV head keeps (its lossless layout, capped by the cache
block's budget) once: bytes over the profile's bandwidth, plus launch and reduction.

Only the per-tile costs are measured: a device profile (compiler/profiles/*.json, written
by bench/calibrate.py). At import this module needs numpy and the numpy-only IR modules, so
bench/calibrate.py runs its fit on the GPU machine, which has no lark and no pydantic.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import configs
from .limits import MAX_ANALYSED_LENGTH, MAX_BATCH, MAX_SIMULATED_ROWS, bound_problem
from .blocks import block_map
from .count import BWD_MATMUL_RATIO
from .ir import Pattern, Program, Status
from .plan import plan_program
from .selection import chosen_counts, selection_seconds

PROFILE_DIR = Path(__file__).parent / "profiles"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
FLEX_BLOCK = 128  # FlexAttention's block-mask granularity (its default BLOCK_SIZE)
SDPA_TILE = (128, 128)
HOPPER_TILE = 128  # query rows and keys per tile of the Gluon kernel (codegen/support/hopper.py)
# grid: attnc's tile-order kernel for grid groups; diag, stripe: attnc's launches of groups with
# a diagonal loop or a stripe loop (compiler/plan.py's Loop), whose tiles cost their own
KERNELS = ("attnc", "sdpa", "flex", "grid", "diag", "stripe", "hopper")
FAMILIES = ("grid", "diag", "stripe", "hopper")  # optional in a profile: absent, attnc's costs stand in
ORDERS = ("lpt", "asc", "desc")
IDEAL_MAX_TILES = 1 << 21  # finer block maps are not built (a kernel's 64 x 64 tiles at N = 128K)


# ----------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class TileCosts:
    """One kernel's costs for one (head_dim, dtype, BM x BN tile), in microseconds of an SM slot.

    `full_us`: an unmasked tile; `masked_us`: a masked tile; `sink_us`: a BM x bn_sink tile
    of the narrow (sink) loop, a narrow tile of width w costing sink_us * w / bn_sink;
    `program_us`: all a program does besides its tiles. `slots_per_sm`: programs resident
    on one SM at once.
    """

    head_dim: int
    dtype: str
    bm: int
    bn: int
    full_us: float
    masked_us: float
    program_us: float
    sink_us: float = 0.0
    bn_sink: int = 16
    slots_per_sm: int = 1
    source: str = ""

    def unit(self, bn_narrow: int) -> np.ndarray:
        """Costs of the feature columns [program, full, masked, narrow tile of width bn_narrow]."""
        return np.array([self.program_us, self.full_us, self.masked_us, self.sink_us * bn_narrow / self.bn_sink])

    def scaled(self, head_dim: int, dtype: str, bm: int, bn: int, dtype_scale: Mapping[str, float]) -> "TileCosts":
        """This entry carried to another shape: tile work scales with bm*bn*head_dim, the rest with bm*head_dim."""
        ds = dtype_scale.get(dtype, 1.0) / dtype_scale.get(self.dtype, 1.0)
        tile = bm * bn * head_dim / (self.bm * self.bn * self.head_dim) * ds
        row = bm * head_dim / (self.bm * self.head_dim) * ds
        return dataclasses.replace(
            self,
            head_dim=head_dim,
            dtype=dtype,
            bm=bm,
            bn=bn,
            full_us=self.full_us * tile,
            masked_us=self.masked_us * tile,
            program_us=self.program_us * row,
            sink_us=self.sink_us * row,
            source=f"scaled from {self.bm}x{self.bn} d{self.head_dim} {self.dtype} (estimate)",
        )


@dataclass(frozen=True)
class KernelCosts:
    """One kernel family (attnc's generated kernels, SDPA, FlexAttention) on one device."""

    launch_us: float
    tiles: tuple[TileCosts, ...]

    def lookup(self, head_dim: int, dtype: str, bm: int, bn: int, dtype_scale: Mapping[str, float]) -> TileCosts:
        """The entry for this shape; the nearest one, scaled, when the profile has none."""
        if not self.tiles:
            raise ValueError("the profile has no tile costs for this kernel: add an entry to its `tiles` list")
        for t in self.tiles:
            if (t.head_dim, t.dtype, t.bm, t.bn) == (head_dim, dtype, bm, bn):
                return t

        def distance(t: TileCosts) -> tuple[float, ...]:
            return (
                DTYPE_BYTES.get(t.dtype) != DTYPE_BYTES.get(dtype),
                abs(math.log2(t.head_dim / head_dim)),
                abs(math.log2(t.bm * t.bn / (bm * bn))),
                t.dtype != dtype,
            )

        return min(self.tiles, key=distance).scaled(head_dim, dtype, bm, bn, dtype_scale)


@dataclass(frozen=True)
class DecodeCosts:
    """Decode: effective bandwidth (TB/s) on the bytes each kernel reads, and fixed costs (us)."""

    attnc_tbps: float
    sdpa_tbps: float
    flex_tbps: float
    launch_us: float
    reduce_us: float
    copy_tbps: float = 0.0
    source: str = ""


@dataclass(frozen=True)
class Profile:
    """A device profile: a small JSON file (compiler/profiles/h100.json is the example).

    `capability` picks the generated kernel's tile configuration (compiler/configs.py) as
    torch.cuda.get_device_capability would on that GPU.
    """

    name: str
    device: str
    sms: int
    capability: tuple[int, int]
    attnc: KernelCosts
    sdpa: KernelCosts
    flex: KernelCosts
    decode: DecodeCosts
    dtype_scale: dict[str, float] = field(default_factory=lambda: {"float16": 1.0, "bfloat16": 1.0})
    source: str = ""
    calibration: tuple[dict[str, Any], ...] = ()
    grid: KernelCosts | None = None  # the tile-order grid kernel; None: attnc's costs stand in
    diag: KernelCosts | None = None  # launches with a diagonal loop; None: attnc's costs
    stripe: KernelCosts | None = None  # launches with a stripe loop; None: attnc's costs
    hopper: KernelCosts | None = None  # the Gluon kernel on Hopper; None: attnc's costs
    # per kernel ("attnc", "sdpa", "flex"): measured backward over backward_time's model of its
    # tile part (bench/calibrate.py fits it; absent: 1, the model as it stands)
    backward: dict[str, float] = field(default_factory=dict)

    def kernel(self, name: str) -> KernelCosts:
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}: expected one of {', '.join(KERNELS)}")
        return getattr(self, name) or self.attnc

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
        def kernel(k: Mapping[str, Any]) -> KernelCosts:
            return KernelCosts(float(k["launch_us"]), tuple(TileCosts(**t) for t in k["tiles"]))

        try:
            return cls(
                name=d["name"],
                device=d.get("device", ""),
                sms=int(d["sms"]),
                capability=tuple(int(x) for x in d["capability"]),
                attnc=kernel(d["attnc"]),
                sdpa=kernel(d["sdpa"]),
                flex=kernel(d["flex"]),
                decode=DecodeCosts(**d["decode"]),
                dtype_scale={k: float(v) for k, v in d.get("dtype_scale", {"float16": 1, "bfloat16": 1}).items()},
                source=d.get("source", ""),
                calibration=tuple(d.get("calibration", ())),
                **{f: kernel(d[f]) for f in FAMILIES if d.get(f)},
                backward={k: float(v) for k, v in d.get("backward", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a device profile: {exc!r}; docs/simulate.md lists its fields") from None


def device_profile_name(device: str) -> str:
    """The profile name of a GPU: its model token, lower case ("NVIDIA H200" and "H200" -> "h200",
    "NVIDIA H100 80GB HBM3" -> "h100"); the whole name, lower case, when it has none."""
    import re

    m = re.search(r"\b([A-Za-z]{1,2}\d{2,4}[A-Za-z]?)\b", device)
    return m.group(1).lower() if m else re.sub(r"\W+", "_", device).strip("_").lower()


def load_profile(name_or_path: str | Path | Profile = "h100") -> Profile:
    """A shipped profile by name (`h100`) or by the GPU's name (`NVIDIA H200`, as
    torch.cuda.get_device_name gives it), or a JSON file by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
        if not path.is_file():
            path = PROFILE_DIR / f"{device_profile_name(str(name_or_path))}.json"
    if not path.is_file():
        raise ValueError(
            f"no device profile {str(name_or_path)!r}: the shipped ones are "
            f"{', '.join(shipped_profiles())}; or pass the path of a profile JSON "
            "(bench/calibrate.py writes one)"
        )
    return _read_profile(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_profile(path: str, mtime_ns: int) -> Profile:
    return Profile.from_dict(json.loads(Path(path).read_text()))


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


# ------------------------------------------------------------------------------- tile counts
@dataclass(frozen=True)
class Tiles:
    """The tiles one program visits, per query block (arrays of length n_qblocks)."""

    bm: int
    bn: int
    full: np.ndarray
    masked: np.ndarray
    narrow: np.ndarray  # tiles of the narrow (sink) loop, bn_narrow keys wide
    bn_narrow: int = 16

    def features(self) -> np.ndarray:
        """Per program: [1, full tiles, masked tiles, narrow tiles]."""
        return np.stack([np.ones_like(self.full), self.full, self.masked, self.narrow], axis=1).astype(np.float64)

    @property
    def totals(self) -> tuple[int, int, int]:
        return int(self.full.sum()), int(self.masked.sum()), int(self.narrow.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "bm": self.bm,
            "bn": self.bn,
            "bn_narrow": self.bn_narrow,
            "full": self.full.tolist(),
            "masked": self.masked.tolist(),
            "narrow": self.narrow.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Tiles":
        arr = {k: np.asarray(d[k], dtype=np.int64) for k in ("full", "masked", "narrow")}
        return cls(d["bm"], d["bn"], bn_narrow=d["bn_narrow"], **arr)


def _no_tiles(n: int, bm: int, bn: int, bn_narrow: int = 16) -> Tiles:
    z = np.zeros(-(-n // bm), dtype=np.int64)
    return Tiles(bm, bn, z, z.copy(), z.copy(), bn_narrow)


@functools.lru_cache(maxsize=32)
def _block_status(pattern: Pattern, n: int, bm: int, bn: int) -> np.ndarray:
    status = block_map(pattern, n, bm, bn).status
    status.setflags(write=False)
    return status


def block_tiles(pattern: Pattern, n: int, bm: int, bn: int) -> Tiles:
    """The ideal visit: every non-empty tile of the exact block map, masked unless full."""
    status = _block_status(pattern, n, bm, bn)
    full = (status == Status.ALL).sum(axis=1).astype(np.int64)
    masked = (status == Status.SOME).sum(axis=1).astype(np.int64)
    return Tiles(bm, bn, full, masked, np.zeros_like(full), bn)


def coarsen(status: np.ndarray, fm: int, fn: int) -> np.ndarray:
    """The block map of (fm*bm) x (fn*bn) tiles from the one of bm x bn tiles (exact)."""
    nq, nk = status.shape
    pad = ((0, -nq % fm), (0, -nk % fn))
    lo = np.pad(status, pad, constant_values=Status.ALL)
    hi = np.pad(status, pad, constant_values=Status.NONE)
    lo = functools.reduce(np.minimum, (lo[i::fm, j::fn] for i in range(fm) for j in range(fn)))
    hi = functools.reduce(np.maximum, (hi[i::fm, j::fn] for i in range(fm) for j in range(fn)))
    return np.where(lo == Status.ALL, Status.ALL, np.where(hi == Status.NONE, Status.NONE, Status.SOME)).astype(np.int8)


def flex_tiles(pattern: Pattern, n: int, fine: tuple[int, int] | None = None) -> Tiles:
    """FlexAttention's block mask (128 x 128 tiles, exact); from a finer block map when one divides it."""
    b = FLEX_BLOCK
    if fine is not None and b % fine[0] == 0 and b % fine[1] == 0:
        status = coarsen(_block_status(pattern, n, *fine), b // fine[0], b // fine[1])
    else:
        status = _block_status(pattern, n, b, b)
    full = (status == Status.ALL).sum(axis=1).astype(np.int64)
    masked = (status == Status.SOME).sum(axis=1).astype(np.int64)
    return Tiles(b, b, full, masked, np.zeros_like(full), b)


def dense_tiles(n: int, causal: bool, bm: int, bn: int) -> Tiles:
    """Tile counts of dense attention (causal or full) in closed form; equal to the block map's."""
    q0 = np.arange(0, n, bm, dtype=np.int64)
    q1 = np.minimum(q0 + bm, n) - 1
    if causal:
        visited = q1 // bn + 1
        full = np.where(q0 == n - 1, visited, (q0 + 1) // bn)
    else:
        visited = full = np.full(len(q0), -(-n // bn), dtype=np.int64)
    return Tiles(bm, bn, full, visited - full, np.zeros_like(full), bn)


# ------------------------------------------------------------- the generated kernel's visits
@dataclass(frozen=True)
class KernelConfig:
    """The launch configuration a generated module picks for one head group (its `config_for`)."""

    bm: int
    bn: int
    bn_narrow: int
    order: str  # "desc": GRID_ORDER 2, longest query blocks first; "asc": natural
    residue: int = 0  # d > 0: the group runs dense attention per residue class q mod d
    split: int = 0  # m > 0: the group runs its split plan, then its residue plan per class q mod m
    hopper: bool = False  # the Gluon kernel (codegen/support/hopper.py): 128 x 128 tiles


def kernel_config(
    program: Program,
    head_dim: int,
    dtype: str,
    capability: tuple[int, int] | None,
    group: int = 0,
    n: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> KernelConfig:
    """What the generated module's `config_for(..., group=group)` returns on a GPU of this
    capability (None: the CPU), under a call's `config` overrides; the tuning of the group is
    its plan's `tuning`. With `n`, the split is off below the plan's `split_from`, as the
    generated prefill decides at that N."""
    tune = _plans(program)[group].tuning
    cfg = configs.choose_config(
        tune,
        capability,
        "fp32" if dtype == "float32" else "16bit",
        head_dim,
        dict(overrides) if overrides else None,
        configs.CONFIGS,
        configs.GRID_CONFIGS,
        configs.CPU_CONFIG,
    )
    order = "desc" if cfg["GRID_ORDER"] == 2 else "asc"
    if n is not None and runs_hopper(cfg, n):
        return KernelConfig(HOPPER_TILE, HOPPER_TILE, HOPPER_TILE, order, hopper=True)  # sinks too: whole tiles
    residue, split = int(tune["residue"]), int(tune.get("split", 0))
    if n is not None and n < tune.get("split_from", 0):
        split = 0
    return KernelConfig(cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_N_NARROW"], order, residue, split)


def runs_hopper(cfg: Mapping[str, Any], n: int) -> bool:
    """Whether a module's launch configuration (config_for's dict) runs the Gluon kernel at
    n keys, as the generated prefill decides (codegen/support/hopper.py's hopper_ok)."""
    return 0 < cfg.get("HOPPER", 0) <= n


def head_group(cfg: KernelConfig, batch: int, heads: int, n: int, head_dim: int, dtype: str) -> int:
    """HEAD_GROUP of the module's `_head_group`: with grid order 2, query blocks are run for groups
    of this many (batch, head) pairs at a time (grid order 3) when their keys and values fit in L2."""
    if cfg.order != "desc":
        return 1
    kv_bytes = 2 * n * head_dim * DTYPE_BYTES[dtype]
    g = max(1, (24 << 20) // kv_bytes)
    g = min(1 << (g.bit_length() - 1), 8)
    return math.gcd(g, batch * heads)


_PLANS: dict[tuple[str, str], Any] = {}  # by (what, program digest): programs with cache policies
# are not hashable


def _memo(what: str, program: Program, make: Any) -> Any:
    key = (what, program.digest())
    if key not in _PLANS:
        if len(_PLANS) > 64:
            _PLANS.clear()
        _PLANS[key] = make(program)
    return _PLANS[key]


def _plans(program: Program) -> tuple[Any, ...]:
    """compiler/plan.py's plan_program: the generated kernel's GroupPlan per head group."""
    return _memo("prefill", program, plan_program)


@dataclass(frozen=True)
class Stripe:
    """The keys of a stripe loop's tiles (templates/prefill.py.j2's STRIPE): tile j holds the
    keys r + m * i for i in [j * width, (j + 1) * width); a masked one keeps only those in
    [klo, khi) (per query block), the rest belonging to other loops."""

    m: int
    r: int
    klo: np.ndarray
    khi: np.ndarray


# key blocks [lo, hi) of `width` keys, masked, and their stripe (None: consecutive keys)
Segment = tuple[np.ndarray, np.ndarray, int, bool, "Stripe | None"]


def segment_keys(seg: Segment, i: int, n: int) -> np.ndarray:
    """The keys below n that query block i visits through one segment."""
    lo, hi, width, masked, stripe = seg
    keys = np.arange(int(lo[i]) * width, max(int(hi[i]), int(lo[i])) * width, dtype=np.int64)
    if stripe is not None:
        keys = stripe.r + stripe.m * keys
        if masked:
            keys = keys[(keys >= stripe.klo[i]) & (keys < stripe.khi[i])]
    return keys[keys < n]


_SORT = {1: (), 2: ((0, 1),), 3: ((0, 1), (1, 2), (0, 1))}  # the template's sorting networks


def kernel_segments(plan: Any, n: int, bm: int, bn: int, bn_narrow: int, n_blocks: int | None = None) -> list[Segment]:
    """The key-block loops `_visit_g` of templates/prefill.py.j2 runs, for every query block at once.

    `plan` is a compiler.plan.GroupPlan; every line below mirrors a line of the template (the
    tests compare it with the kernel's TRACE mode under the interpreter). `n_blocks`: how many
    query blocks the grid runs (default cdiv(n, bm); a residue class may run one more).
    """
    q0 = np.arange(0, -(-n // bm) if n_blocks is None else n_blocks, dtype=np.int64) * bm
    zero = np.zeros_like(q0)
    q_last = np.minimum(q0 + bm, n) - 1
    env = {"q0": q0, "q_last": q_last}

    segs: list[Segment] = []
    if plan.mode == "empty":
        return segs
    if plan.mode == "hull":
        h_lo, h_hi = zero + n, zero - 1
        for t in plan.terms:
            t_lo, t_hi, t_on = t.hull.at(env, n)
            t_on = t_on & (t_hi >= t_lo)
            h_lo = np.where(t_on, np.minimum(h_lo, t_lo), h_lo)
            h_hi = np.where(t_on, np.maximum(h_hi, t_hi), h_hi)
        h_a = h_lo // bn
        segs.append((h_a, np.where(h_hi >= h_lo, h_hi // bn + 1, h_a), bn, True, None))
        return segs

    earlier: list[tuple[np.ndarray, np.ndarray]] = []  # [lo, hi) in keys of the terms visited before

    def gaps(lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
        """[lo, hi) minus the ranges of the earlier terms: the template's sorted gaps."""
        m = len(earlier)
        x = [e[0] for e in earlier]
        y = [e[1] for e in earlier]
        for i, j in _SORT.get(m, ()):
            swap = x[j] < x[i]
            xs, ys = np.where(swap, x[j], x[i]), np.where(swap, y[j], y[i])
            x[j], y[j] = np.where(swap, x[i], x[j]), np.where(swap, y[i], y[j])
            x[i], y[i] = xs, ys
        for i in range(1, m):
            y[i] = np.maximum(y[i], y[i - 1])
        out = []
        for j in range(m + 1):
            p_lo = lo if j == 0 else np.maximum(lo, y[j - 1])
            out.append((p_lo, np.maximum(p_lo, np.minimum(hi, x[j]) if j < m else hi)))
        return out

    def visit(t: Any, a, b, c, d, size: int) -> None:
        if not earlier:
            if t.full and t.edge_merge:  # one loop over [a, b) and [c, d), then [b, c)
                segs.extend([(a, b, size, True, None), (c, d, size, True, None), (b, c, size, False, None)])
            elif t.full:
                segs.extend([(a, b, size, True, None), (b, c, size, False, None), (c, d, size, True, None)])
            else:
                segs.append((a, d, size, True, None))
            return
        for p_lo, p_hi in gaps(a * size, d * size):
            if t.full:
                pb = np.minimum(np.maximum(b * size, p_lo), p_hi)
                pc = np.minimum(np.maximum(c * size, pb), p_hi)
                segs.extend(
                    [
                        (p_lo // size, pb // size, size, True, None),
                        (pb // size, pc // size, size, False, None),
                        (pc // size, p_hi // size, size, True, None),
                    ]
                )
            else:
                segs.append((p_lo // size, p_hi // size, size, True, None))

    def stripe(t: Any, t_lo, t_hi, on, t_flo, t_fhi, f_on, size: int) -> None:
        """The stripe loop: per gap, the stripe keys r + m * j in it, BLOCK_N j per tile."""
        m, r = t.loop.m, t.loop.r
        hi = np.where(on & (t_hi >= t_lo), t_hi + 1, t_lo)
        for p_lo, p_hi in gaps(t_lo, hi):
            s_a = -(-(p_lo - r) // m)
            s_d = np.maximum(-(-(p_hi - r) // m), s_a)
            j_a = s_a // size
            j_d = np.where(s_d > s_a, -(-s_d // size), j_a)
            keys = Stripe(m, r, p_lo, p_hi)
            if not t.full:
                segs.append((j_a, j_d, size, True, keys))
                continue
            s_b = np.minimum(np.maximum(-(-(t_flo - r) // m), s_a), s_d)
            s_c = np.minimum(np.maximum(np.maximum(t_fhi + m - r, 0) // m, s_b), s_d)
            s_c = np.where(f_on, s_c, s_b)
            j_b = np.minimum(np.maximum(-(-s_b // size), j_a), j_d)
            j_c = np.minimum(np.maximum(s_c // size, j_b), j_d)
            segs.extend([(j_a, j_b, size, True, keys), (j_b, j_c, size, False, keys), (j_c, j_d, size, True, keys)])

    for i, t in enumerate(plan.terms):
        size = bn_narrow if t.tile == "BLOCK_N_NARROW" else bn
        t_lo, t_hi, on = t.hull.at(env, n)
        t_flo, t_fhi, f_on = t.full_bounds.at(env, n) if t.full else (None, None, None)
        loop = t.loop
        if loop is None:
            a = t_lo // size
            d = np.where(on & (t_hi >= t_lo), t_hi // size + 1, a)
            b = c = None
            if t.full:
                b = np.minimum(np.maximum(-(-t_flo // size), a), d)
                c = np.minimum(np.maximum(np.maximum(t_fhi + 1, 0) // size, b), d)
                c = np.where(f_on, c, b)
            visit(t, a, b, c, d, size)
            if i < len(plan.terms) - 1:
                earlier.append((a * size, d * size))
            continue
        if loop.kind == "stripe":
            stripe(t, t_lo, t_hi, on, t_flo, t_fhi, f_on, size)
            continue
        if loop.kind == "power":
            B = loop.block
            p0, p1 = q0 // B, q_last // B
            n_iter = 1 + np.array([int(v).bit_length() if v > 0 else 0 for v in p1.tolist()], dtype=np.int64)
        else:
            n_iter = np.maximum(q_last - loop.d0 - t_lo + loop.m, 0) // loop.m
        lim = zero + -(-n // size)
        for jr in range(int(n_iter.max(initial=0))):
            live = jr < n_iter  # the kernel's loop runs n_iter times per program
            if loop.kind == "power":
                dist = (1 << jr) >> 1
                r_lo = np.maximum((p0 - dist) * B, t_lo)
                r_hi = np.minimum((p1 - dist) * B + B - 1, t_hi)
            else:
                dist = loop.d0 + loop.m * jr
                r_lo = np.maximum(q0 - dist, t_lo)
                r_hi = np.minimum(q_last - dist, t_hi)
            r_a = r_lo // size
            r_d = np.where(on & (r_hi >= r_lo), r_hi // size + 1, r_a)
            r_d = np.minimum(r_d, lim)
            r_a = np.minimum(r_a, r_d)
            lim = np.where(live & (r_a < r_d), r_a, lim)
            r_d = np.where(live, r_d, r_a)
            r_b = r_c = None
            if t.full:
                f_lo = np.maximum((p0 - dist) * B, t_flo)
                f_hi = np.minimum((p0 - dist) * B + B - 1, t_fhi)
                r_b = np.minimum(np.maximum(-(-f_lo // size), r_a), r_d)
                r_c = np.minimum(np.maximum(np.maximum(f_hi + 1, 0) // size, r_b), r_d)
                r_c = np.where(f_on & (p0 == p1), r_c, r_b)
            visit(t, r_a, r_b, r_c, r_d, size)
    return segs


def _count(segs: Sequence[Segment], out: Tiles) -> Tiles:
    for lo, hi, width, is_masked, _ in segs:
        count = np.maximum(hi - lo, 0)
        if width != out.bn:
            out.narrow[:] += count
        elif is_masked:
            out.masked[:] += count
        else:
            out.full[:] += count
    return out


def grid_kernel_tiles(grid: Any, n: int, cfg: KernelConfig) -> Tiles | None:
    """Tile counts per program of a grid group's tile-order kernel (templates/grid.py.j2), or
    None when it does not run (a length other than prefix + grid tokens, or unplanned tiles):
    a program per query tile visits the union of its terms' boxes of key tiles, after the
    prefix keys; a program per block of prefix rows visits every key. All tiles are masked."""
    if not grid.runs(n, cfg.bm, cfg.bn):
        return None
    from .tiling import tile_visits

    per_tile = tile_visits(grid.source, *grid.tiles[(cfg.bm, cfg.bn)]) + -(-grid.prefix // cfg.bn)
    masked = np.concatenate([per_tile, np.full(-(-grid.prefix // cfg.bm), -(-n // cfg.bn), dtype=np.int64)])
    z = np.zeros_like(masked)
    return Tiles(cfg.bm, cfg.bn, z, masked, z.copy(), cfg.bn)


def _concat(parts: list[Tiles], cfg: KernelConfig) -> Tiles:
    """The programs of several Tiles, one after the other."""
    return Tiles(
        cfg.bm,
        cfg.bn,
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("full", "masked", "narrow")),
        cfg.bn_narrow,
    )


def _class_tiles(sub: Any, n: int, d: int, cfg: KernelConfig) -> Tiles:
    """The residue mode's programs: for each class rho = 0 .. d-1, the plan `sub`'s visits on
    its subsequence of (n - rho) / d positions, cdiv(cdiv(n, d), BLOCK_M) programs each."""
    per_class = -(-(-(-n // d)) // cfg.bm)  # noqa: B002  (cdiv(cdiv(n, d), bm): negations, not a decrement)
    parts = []
    for rho in range(d):
        n_rho = (n - rho + d - 1) // d
        z = np.zeros(per_class, dtype=np.int64)
        out = Tiles(cfg.bm, cfg.bn, z, z.copy(), z.copy(), cfg.bn_narrow)
        parts.append(_count(kernel_segments(sub, n_rho, cfg.bm, cfg.bn, cfg.bn_narrow, per_class), out))
    return _concat(parts, cfg)


def kernel_tiles(plan: Any, n: int, cfg: KernelConfig) -> Tiles:
    """Tile counts per program of the generated kernel for one head (see kernel_segments), in
    grid order. With `cfg.residue` = d (and a residue plan), the kernel's residue mode: the
    residue plan per class q mod d (_class_tiles). With `cfg.split` = m (and a split plan), its
    two launches as one: the split plan's programs, then the residue plan's per class q mod m."""
    if getattr(plan, "grid", None) is not None:
        grid = grid_kernel_tiles(plan.grid, n, cfg)
        if grid is not None:
            return grid
    d = cfg.residue if getattr(plan, "residue_plan", None) is not None else 0
    m = cfg.split if getattr(plan, "split_plan", None) is not None else 0
    if getattr(plan, "select", None) is not None:
        d = m = 0  # selecting groups never run per residue class
    if m:
        first = dataclasses.replace(cfg, split=0)
        return _concat([kernel_tiles(plan.split_plan, n, first), _class_tiles(plan.residue_plan, n, m, cfg)], cfg)
    if not d:
        tiles = _count(
            kernel_segments(plan, n, cfg.bm, cfg.bn, cfg.bn_narrow), _no_tiles(n, cfg.bm, cfg.bn, cfg.bn_narrow)
        )
        if getattr(plan, "select", None) is not None:  # the chosen blocks: masked tiles, at the budget
            block = plan.select.atom.block
            rows = np.arange(tiles.masked.size) * cfg.bm // block
            tiles = dataclasses.replace(
                tiles, masked=tiles.masked + chosen_counts(plan.select, n)[rows] * (block // cfg.bn)
            )
        return tiles
    return _class_tiles(plan.residue_plan, n, d, cfg)


def cost_family(plan: Any, cfg: KernelConfig, grid_runs: bool) -> str:
    """Whose tile costs a group's launch runs at (Launch.costs): "grid" for the tile-order
    kernel, "diag" or "stripe" when the plan it runs has a diagonal or a stripe loop, else ""
    (attnc's), "hopper" for the Gluon kernel. Residue mode runs the residue plan, which has
    no loop."""
    if grid_runs:
        return "grid"
    if cfg.hopper:
        return "hopper"
    if cfg.residue and getattr(plan, "residue_plan", None) is not None:
        return ""
    if cfg.split and getattr(plan, "split_plan", None) is not None:
        plan = plan.split_plan  # and the residue plan, which has no loop
    kinds = {t.loop.kind for t in plan.terms if t.loop is not None}
    return "diag" if "diffmod" in kinds else ("stripe" if "stripe" in kinds else "")


# -------------------------------------------------------------------------------- scheduling
@dataclass(frozen=True)
class Launch:
    """The programs of one kernel launch: per query head its tiles (heads of one pattern share
    one Tiles), `batch` copies, dispatched in `order`: "asc"/"desc" is grid order (batch, then
    head, then query blocks ascending or descending), "lpt" longest first. `head_group` > 1
    (with "desc": the generated module's grid order 3): query blocks descending for
    `head_group` (batch, head) pairs at a time, the pairs fastest. `costs`: whose tile costs
    the launch runs at ("grid": the tile-order kernel of grid groups; "": its family's)."""

    heads: tuple[Tiles, ...]
    batch: int = 1
    order: str = "lpt"
    head_group: int = 1
    costs: str = ""

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"launch order {self.order!r}: expected one of {', '.join(ORDERS)}")

    def programs(self) -> tuple[np.ndarray, np.ndarray]:
        """(features of each run of identical programs in dispatch order, run lengths)."""
        if self.order == "lpt":
            copies = collections.Counter(id(t) for t in self.heads)
            kinds = self._kinds()
            feats = np.concatenate([t.features() for t in kinds])
            count = np.concatenate([np.full(len(t.full), copies[id(t)] * self.batch, dtype=np.int64) for t in kinds])
            return feats, count
        per_head = {id(t): t.features()[:: -1 if self.order == "desc" else 1] for t in self.heads}
        rows = [per_head[id(t)] for t in self.heads] * self.batch
        g = self.head_group if self.order == "desc" and len(rows) % max(self.head_group, 1) == 0 else 1
        if g > 1:  # blocks of g pairs: each query block (descending) for the g pairs, then the next
            seq = np.concatenate(
                [np.stack(rows[i : i + g], axis=1).reshape(-1, rows[i].shape[1]) for i in range(0, len(rows), g)]
            )
        else:
            seq = np.concatenate(rows)
        start = np.concatenate(([True], (np.diff(seq, axis=0) != 0).any(axis=1)))
        idx = np.flatnonzero(start)
        return seq[idx], np.diff(np.append(idx, len(seq)))

    def _kinds(self) -> list[Tiles]:
        """The distinct Tiles objects of the heads, in order of first use."""
        return list({id(t): t for t in self.heads}.values())

    def to_dict(self) -> dict[str, Any]:
        kinds = self._kinds()
        index = {id(t): i for i, t in enumerate(kinds)}
        return {
            "batch": self.batch,
            "order": self.order,
            "head_group": self.head_group,
            "costs": self.costs,
            "head_tiles": [index[id(t)] for t in self.heads],
            "tiles": [t.to_dict() for t in kinds],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Launch":
        tiles = [Tiles.from_dict(t) for t in d["tiles"]]
        return cls(
            tuple(tiles[i] for i in d["head_tiles"]), d["batch"], d["order"], d.get("head_group", 1), d.get("costs", "")
        )


def schedule(
    cost: np.ndarray, count: np.ndarray, slots: int, order: str = "lpt", track: bool = False
) -> tuple[float, np.ndarray | None]:
    """Greedy list scheduling: run i is count[i] programs of cost[i], dispatched in the given
    order ("lpt": longest first), each to the slot that frees first. Returns the makespan and,
    with `track`, how many programs of each run the slot that finishes last ran.

    Exact and fast: one heap operation per program, except that while the finish times of
    all slots lie within the next cost c, greedy gives the next `slots` programs of a run one
    to each slot, so whole rounds are added at once.
    """
    cost = np.asarray(cost, dtype=np.float64)
    count = np.asarray(count, dtype=np.int64)
    runs = np.argsort(-cost, kind="stable") if order == "lpt" else range(len(cost))
    heap = [(0.0, s) for s in range(slots)]
    log: list[tuple[int, int, int]] = []
    for i in runs:
        c, m = float(cost[i]), int(count[i])
        while m > 0:
            if m >= slots:
                heap.sort()
                if heap[-1][0] - heap[0][0] <= c:
                    k = m // slots
                    heap = [(t + k * c, s) for t, s in heap]
                    if track:
                        log.extend((s, int(i), k) for _, s in heap)
                    m -= k * slots
                    continue
            for _ in range(min(m, slots)):
                t, s = heap[0]
                heapq.heapreplace(heap, (t + c, s))
                if track:
                    log.append((s, int(i), 1))
            m -= min(m, slots)
    end, last = max(heap)
    if not track:
        return end, None
    per_run = np.zeros(len(cost))
    for s, i, k in log:
        if s == last:
            per_run[i] += k
    return end, per_run


# -------------------------------------------------------------------------------- prediction
@dataclass(frozen=True)
class KernelTime:
    """A predicted kernel time and where it goes: the *_ms parts add up to `ms`."""

    kernel: str
    ms: float
    full_ms: float
    masked_ms: float
    sink_ms: float
    overhead_ms: float
    idle_ms: float
    launch_ms: float
    tiles_full: int
    tiles_masked: int
    tiles_sink: int
    programs: int
    waves: float
    tile: tuple[int, int]
    note: str = ""
    select_ms: float = 0.0  # a selection's own kernels (an estimate; compiler/selection.py)


BWD_PASSES = 2  # the backward's main launches: dK/dV by key tile, dQ by query tile
# matrix products per tile in the backward, against the forward's 2: attnc's kernels (and
# FlexAttention's) recompute QK^T and dP in a separate dQ pass (4 + 3); SDPA's FlashAttention-2
# accumulates dQ atomically in the dK/dV pass (5, count.BWD_MATMUL_RATIO times the forward)
BWD_MATMULS = {"attnc": 7, "flex": 7, "sdpa": round(2 * BWD_MATMUL_RATIO)}


def backward_time(t: KernelTime, scale: float = 1.0) -> KernelTime:
    """The backward pass's predicted time from the forward's, by a simple model: the forward's
    tile costs and tail scaled by the kernel's matrix products per tile over the forward's 2
    (BWD_MATMULS) and by `scale` (a profile's `backward` factor for the kernel, fitted to
    measured backward passes; 1 without one), its program overhead and launch paid once per
    main pass (BWD_PASSES); the small row-sum pass is not counted."""
    r, p = BWD_MATMULS[t.kernel] / 2 * scale, BWD_PASSES
    parts = dict(
        full_ms=t.full_ms * r,
        masked_ms=t.masked_ms * r,
        sink_ms=t.sink_ms * r,
        overhead_ms=t.overhead_ms * p,
        idle_ms=t.idle_ms * r,
        launch_ms=t.launch_ms * p,
    )
    return dataclasses.replace(t, ms=sum(parts.values()), note=f"backward: forward tiles x {r}", **parts)


def launch_time(
    kernel: str, launch: Launch, costs: TileCosts, launch_us: float, sms: int, note: str = ""
) -> KernelTime:
    """Predicted time of one launch."""
    feats, count = launch.programs()
    bn_narrow = launch.heads[0].bn_narrow
    unit = costs.unit(bn_narrow)
    slots = sms * costs.slots_per_sm
    makespan, _ = schedule(feats @ unit, count, slots, launch.order)
    work = (feats * count[:, None]).sum(axis=0)
    parts = work * unit / slots / 1000.0
    busy = makespan / 1000.0
    t0 = launch.heads[0]
    return KernelTime(
        kernel,
        busy + launch_us / 1000.0,
        float(parts[1]),
        float(parts[2]),
        float(parts[3]),
        float(parts[0]),
        float(max(busy - parts.sum(), 0.0)),
        launch_us / 1000.0,
        int(work[1]),
        int(work[2]),
        int(work[3]),
        int(work[0]),
        float(work[0] / slots),
        (t0.bm, t0.bn),
        note or costs.source,
    )


@dataclass(frozen=True)
class Shape:
    """The problem: q (batch, heads, n, head_dim); k and v with kv_heads heads."""

    n: int
    batch: int = 1
    heads: int = 32
    kv_heads: int | None = None
    head_dim: int = 128
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} is not supported: one of {', '.join(DTYPE_BYTES)}")
        for name, value, hi in (
            ("the sequence length", self.n, MAX_ANALYSED_LENGTH),
            ("batch", self.batch, MAX_BATCH),
            ("heads", self.heads, MAX_SIMULATED_ROWS),
            ("head_dim", self.head_dim, MAX_SIMULATED_ROWS),
        ):
            problem = bound_problem(name, value, 1, hi)
            if problem:
                raise ValueError(problem)
        if self.batch * self.heads * self.n > MAX_SIMULATED_ROWS:
            raise ValueError(
                f"batch x heads x N = {self.batch * self.heads * self.n:,} is more than the simulator's "
                f"limit of {MAX_SIMULATED_ROWS:,} (2**32): use a smaller batch, or predict one batch entry"
            )
        if self.heads % self.kv:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads={self.kv}: GQA cannot group them")

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads


def head_patterns(program: Program, heads: int, layer: int) -> list[int]:
    """The head group of each of `heads` query heads in `layer` (any head count when the layer's
    heads share one pattern, as in the generated module)."""
    if len(program.groups) == 1:
        return [0] * heads
    row = [program.group_of(layer, h) for h in range(program.model.heads)]
    if len(set(row)) == 1:
        return row[:1] * heads
    if heads != program.model.heads:
        raise ValueError(
            f"{program.name} assigns patterns per head for {program.model.heads} query heads, "
            f"got heads={heads}: give the model's heads (--model heads={heads}) so that its "
            "sections resolve for that many heads"
        )
    return row


def _layers(program: Program, layer: int | None) -> list[tuple[int, int]]:
    """(a layer, how many of the model's layers share its head assignment): one launch each,
    weighted, so that figures are for the whole model (or for `layer` alone)."""
    if layer is not None:
        if not 0 <= layer < max(program.model.layers, 1):
            raise ValueError(f"layer must be in [0, {program.model.layers}), got layer={layer}")
        return [(layer, 1)]
    if not program.varies_by_layer:
        return [(0, max(program.model.layers, 1))]
    rows: dict[tuple[int, ...], list[int]] = {}
    for l, row in enumerate(program.group_table()):
        rows.setdefault(tuple(row), []).append(l)
    return [(ls[0], len(ls)) for ls in rows.values()]


@dataclass(frozen=True)
class Workload:
    """What a prediction times, whatever the tile costs: for prefill, each kernel's launches
    and how many layers run each; for decode, the bytes each kernel reads per step.

    Building one needs the IR, the kernel plan and the block map (this machine); timing one
    needs numpy and a profile of the same GPU capability only, so bench/gpu.py builds them
    with its modules and times them on the GPU with the profile calibrated there.
    """

    mode: str  # prefill | decode
    shape: Shape
    capability: tuple[int, int]  # the tiles of attnc's kernel were chosen for this GPU
    layers: int
    launches: dict[str, tuple[tuple[Launch, int], ...]]  # prefill: kernel -> ((launch, layers), ...)
    bytes_read: dict[str, float]  # decode: kernel -> bytes per step
    notes: dict[str, str]  # kernel -> what was counted
    ideal_tiles: int  # non-empty tiles of the exact block map at attnc's tiles (-1: not computed)
    cache_bytes: int
    dense_cache_bytes: int
    cache_note: str
    selection_s: float = 0.0  # prefill: predicted seconds of the selections (compiler/selection.py)

    def to_dict(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "mode",
                "layers",
                "bytes_read",
                "notes",
                "ideal_tiles",
                "cache_bytes",
                "dense_cache_bytes",
                "cache_note",
                "selection_s",
            )
        }
        d.update(
            shape=dataclasses.asdict(self.shape),
            capability=list(self.capability),
            launches={k: [[l.to_dict(), w] for l, w in v] for k, v in self.launches.items()},
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Workload":
        return cls(
            d["mode"],
            Shape(**d["shape"]),
            tuple(d["capability"]),
            d["layers"],
            {k: tuple((Launch.from_dict(l), w) for l, w in v) for k, v in d["launches"].items()},
            dict(d["bytes_read"]),
            dict(d["notes"]),
            d["ideal_tiles"],
            d["cache_bytes"],
            d["dense_cache_bytes"],
            d["cache_note"],
            d.get("selection_s", 0.0),
        )


@dataclass(frozen=True)
class Prediction:
    """Predicted times of one attention call (summed over `layers` layers) on one device."""

    mode: str  # prefill | decode
    shape: Shape
    device: str
    layers: int
    attnc: KernelTime
    sdpa: KernelTime
    flex: KernelTime
    ideal_tiles: int  # non-empty tiles of the exact block map at attnc's tiles (-1: not computed)
    cache_bytes: int
    dense_cache_bytes: int
    cache_note: str

    @property
    def speedup(self) -> float:
        """Dense (SDPA) time over attnc's."""
        return self.sdpa.ms / self.attnc.ms

    @property
    def speedup_vs_flex(self) -> float:
        """FlexAttention's (estimated) time over attnc's."""
        return self.flex.ms / self.attnc.ms

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(speedup=self.speedup, speedup_vs_flex=self.speedup_vs_flex, flex_is_estimate=True)
        return d


def _sum_times(parts: Sequence[tuple[KernelTime, int]]) -> KernelTime:
    """Launch predictions summed, each weighted by how many layers run it."""
    first, w0 = parts[0]
    if len(parts) == 1 and w0 == 1:
        return first
    tiles = {t.tile for t, _ in parts}
    note = first.note if len(tiles) == 1 else f"{first.note}; tiles " + ", ".join(f"{m}x{n}" for m, n in sorted(tiles))
    sums = {
        k: sum(getattr(t, k) * w for t, w in parts)
        for k in ("ms", "full_ms", "masked_ms", "sink_ms", "overhead_ms", "idle_ms", "launch_ms", "waves")
    }
    for k in ("tiles_full", "tiles_masked", "tiles_sink", "programs"):
        sums[k] = int(sum(getattr(t, k) * w for t, w in parts))
    return dataclasses.replace(first, note=note, **sums)


SELECT_TBPS = 2.5  # TB/s the selection's pooling reads at (an estimate: about 75% of an H100's peak)


def prefill_workload(
    program: Program, shape: Shape, capability: tuple[int, int] = (9, 0), layer: int | None = None
) -> Workload:
    """The launches of a prefill forward: attnc's kernel (one launch per head group of a layer,
    as the generated module runs it: that group's plan, over its heads only, at the tiles its
    `config_for` picks on a GPU of this capability), dense SDPA and FlexAttention's block mask."""
    plans = _plans(program)
    causal = all(g.pattern.is_causal for g in program.groups)
    rows = [(head_patterns(program, shape.heads, l), weight) for l, weight in _layers(program, layer)]
    layers = sum(w for _, w in rows)
    used = sorted({g for gids, _ in rows for g in gids})
    cfgs = {g: kernel_config(program, shape.head_dim, shape.dtype, capability, g, shape.n) for g in used}
    mine = {g: kernel_tiles(plans[g], shape.n, cfgs[g]) for g in used}
    grid_runs = {g: plans[g].grid is not None and plans[g].grid.runs(shape.n, cfgs[g].bm, cfgs[g].bn) for g in used}

    # exact block maps at the kernel's tiles only while all groups' maps together stay small
    maps = sum(-(-shape.n // cfgs[g].bm) * -(-shape.n // cfgs[g].bn) for g in used)

    def fine_of(g: int) -> tuple[int, int] | None:
        return (cfgs[g].bm, cfgs[g].bn) if maps <= IDEAL_MAX_TILES else None

    # the exact block map at each group's tiles: the ideal visit, and coarsened, Flex's block mask
    theirs = {g: flex_tiles(program.groups[g].pattern, shape.n, fine_of(g)) for g in used}
    ideal = -1
    if all(fine_of(g) for g in used):
        visits = {g: sum(block_tiles(program.groups[g].pattern, shape.n, *fine_of(g)).totals) for g in used}
        ideal = sum(weight * shape.batch * sum(visits[g] for g in gids) for gids, weight in rows)
    dense = Launch((dense_tiles(shape.n, causal, *SDPA_TILE),) * shape.heads, shape.batch, "lpt")
    attnc = []
    for gids, w in rows:
        for g in sorted(set(gids)):
            nh = gids.count(g)
            hg = head_group(cfgs[g], shape.batch, nh, shape.n, shape.head_dim, shape.dtype)
            attnc.append(
                (
                    Launch(
                        (mine[g],) * nh, shape.batch, cfgs[g].order, hg, cost_family(plans[g], cfgs[g], grid_runs[g])
                    ),
                    w,
                )
            )
    launches = {
        "attnc": tuple(attnc),
        "flex": tuple((Launch(tuple(theirs[g] for g in gids), shape.batch, "asc"), w) for gids, w in rows),
        "sdpa": ((dense, layers),),
    }
    res = sorted({cfgs[g].residue for g in used if cfgs[g].residue and plans[g].residue_plan is not None})
    res += sorted({cfgs[g].split for g in used if cfgs[g].split and plans[g].split_plan is not None})
    notes = {
        "attnc": f"residue mode (dense tiles per class q mod {', '.join(map(str, res))})" if res else "",
        "sdpa": f"dense {'causal' if causal else 'full'} SDPA",
        "flex": "estimate: FlexAttention's tile costs on its exact 128 x 128 block mask",
    }
    cache, dense_cache, note = cache_bytes(program, shape, layer)
    selecting = [(plans[g].select, gids.count(g), w) for gids, w in rows for g in sorted(set(gids))]
    size = DTYPE_BYTES.get(shape.dtype, 2)
    kv_per = shape.heads // shape.kv
    select_s = sum(
        w * selection_seconds(sp, shape.n, shape.batch, nh, max(1, nh // kv_per), shape.head_dim, size, SELECT_TBPS)
        for sp, nh, w in selecting
        if sp is not None
    )
    if select_s:
        notes["attnc"] = (notes["attnc"] + "; " if notes["attnc"] else "") + (
            "selected blocks at the budget (a mass budget: every candidate); selection time estimated"
        )
    return Workload(
        "prefill", shape, tuple(capability), layers, launches, {}, notes, ideal, cache, dense_cache, note, select_s
    )


def decode_workload(program: Program, shape: Shape, layer: int | None = None) -> Workload:
    """One decode step (one query token per sequence) at context n: the bytes each kernel reads."""
    cache, dense, note = cache_bytes(program, shape, layer)
    per_token = 2 * shape.head_dim * DTYPE_BYTES[shape.dtype] * shape.batch
    group = shape.heads // shape.kv
    flex_tokens = 0.0  # Flex decodes the uncompacted cache, skipping empty 128-key blocks
    rows = _layers(program, layer)
    for l, weight in rows:
        for g in head_patterns(program, shape.heads, l):
            row = _next_query_keys(program.groups[g].pattern, shape.n)
            flex_tokens += (
                (np.add.reduceat(row, np.arange(0, shape.n, FLEX_BLOCK)) > 0).sum() * FLEX_BLOCK * weight / group
            )
    notes = {
        "attnc": "cache bytes / bandwidth + launch + split-K reduction",
        "sdpa": "full cache / bandwidth + launch",
        "flex": "estimate: non-empty 128-key blocks / bandwidth",
    }
    return Workload(
        "decode",
        shape,
        (0, 0),
        sum(w for _, w in rows),
        {},
        {"attnc": float(cache), "sdpa": float(dense), "flex": flex_tokens * per_token},
        notes,
        -1,
        cache,
        dense,
        note,
    )


def time_workload(work: Workload, profile: str | Path | Profile = "h100") -> Prediction:
    """Predicted times of a workload on a device profile (numpy only)."""
    prof = load_profile(profile)
    times = {}
    if work.mode == "decode":
        d = prof.decode
        fixed = d.launch_us * work.layers
        for kernel, tbps, reduce in (
            ("attnc", d.attnc_tbps, d.reduce_us),
            ("sdpa", d.sdpa_tbps, 0.0),
            ("flex", d.flex_tbps, d.reduce_us),
        ):
            move = work.bytes_read[kernel] / (tbps * 1e12) * 1e3
            times[kernel] = KernelTime(
                kernel,
                move + (fixed + reduce * work.layers) / 1000.0,
                move,
                0.0,
                0.0,
                reduce * work.layers / 1000.0,
                0.0,
                fixed / 1000.0,
                0,
                0,
                0,
                0,
                0.0,
                (0, 0),
                work.notes[kernel],
            )
    else:
        if tuple(prof.capability) != tuple(work.capability):
            raise ValueError(
                f"the workload was planned for a GPU of capability {tuple(work.capability)} and the "
                f"profile {prof.name!r} is for {tuple(prof.capability)}: the kernel picks other tiles "
                "there; build the workload for the profile's capability"
            )
        s = work.shape
        for kernel, parts in work.launches.items():
            timed = []
            for launch, w in parts:  # attnc: one launch per head group of a layer, each at its tiles
                kc = prof.kernel(launch.costs or kernel)
                t = launch.heads[0]
                costs = kc.lookup(s.head_dim, s.dtype, t.bm, t.bn, prof.dtype_scale)
                timed.append((launch_time(kernel, launch, costs, kc.launch_us, prof.sms, work.notes[kernel]), w))
            times[kernel] = _sum_times(timed)
        if work.selection_s:
            t = times["attnc"]
            extra = work.selection_s * 1e3
            times["attnc"] = dataclasses.replace(t, ms=t.ms + extra, select_ms=extra)
    return Prediction(
        work.mode,
        work.shape,
        prof.device or prof.name,
        work.layers,
        times["attnc"],
        times["sdpa"],
        times["flex"],
        work.ideal_tiles,
        work.cache_bytes,
        work.dense_cache_bytes,
        work.cache_note,
    )


def predict_prefill(
    program: Program, shape: Shape, profile: str | Path | Profile = "h100", layer: int | None = None
) -> Prediction:
    """Predicted forward time of attnc's generated kernel, SDPA and FlexAttention (an estimate)."""
    prof = load_profile(profile)
    return time_workload(prefill_workload(program, shape, prof.capability, layer), prof)


def predict_decode(
    program: Program, shape: Shape, profile: str | Path | Profile = "h100", layer: int | None = None
) -> Prediction:
    """Predicted time of one decode step at context n: bytes read over bandwidth, plus fixed costs."""
    return time_workload(decode_workload(program, shape, layer), profile)


# ---------------------------------------------------------------------------------- KV cache
def _next_query_keys(pattern: Pattern, n: int) -> np.ndarray:
    """Which keys 0..n-1 the query at position n attends."""
    return np.asarray(pattern.holds(np.int64(n), np.arange(n, dtype=np.int64)), dtype=bool)


def cache_tokens(program: Program, shape: Shape, layer: int) -> tuple[list[int], str]:
    """Tokens each KV head keeps at context n: the lossless layout of compiler/cache_plan.py
    (its liveness analysis), capped by the cache block's budget. (Imported here: the timing
    half of this module also runs on the GPU machine, which has numpy but not the front end.)"""
    from .cache_plan import kv_store
    from .liveness import decodable

    if not all(decodable(g.pattern) for g in program.groups):
        from .liveness import NO_DECODE

        return [shape.n] * shape.kv, f"{NO_DECODE}: counted as dense"
    kv_heads = program.model.kv_heads
    if kv_heads != shape.kv:
        stores = [kv_store(program, layer, kv) for kv in range(kv_heads)]
        if len({(s.layout, s.budget) for s in stores}) != 1:
            raise ValueError(
                f"{program.name} plans its cache per KV head for {kv_heads} KV heads, got "
                f"kv_heads={shape.kv}: give the model's kv_heads (--model kv_heads={shape.kv})"
            )
        rows = stores[:1] * shape.kv
    else:
        rows = [kv_store(program, layer, kv) for kv in range(kv_heads)]
    out, lossy = [], False
    for store in rows:
        tokens = store.layout.tokens(shape.n)
        if store.budget is not None:
            lossy |= store.budget < tokens
            tokens = min(tokens, store.budget)
        out.append(tokens)
    return out, "lossless layout (liveness)" + (", lossy budgets of the cache block" if lossy else "")


def cache_bytes(program: Program, shape: Shape, layer: int | None = None) -> tuple[int, int, str]:
    """KV-cache bytes (K and V) at context n, attnc's and a dense cache's, over the layers."""
    per_token = 2 * shape.head_dim * DTYPE_BYTES[shape.dtype] * shape.batch
    total, note, layers = 0, "", 0
    for l, weight in _layers(program, layer):
        tokens, note = cache_tokens(program, shape, l)
        total += sum(tokens) * per_token * weight
        layers += weight
    return total, shape.n * shape.kv * per_token * layers, note


# ---------------------------------------------------------------------------- bench/gpu.py
def _get(case: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = case.get(name) if isinstance(case, Mapping) else getattr(case, name, None)
        if value is not None:
            return value
    return default


def predict(case: Any, kernel: str = "attnc", profile: str | Path | Profile = "h100", training: bool = False) -> float:
    """Predicted milliseconds of one case of bench/gpu.py; `kernel` is "attnc", "sdpa" or "flex";
    `training`: forward + backward (backward_time's model).

    `case` is a Workload or its `to_dict()` (numpy only: this runs on the GPU machine), or a
    mapping or object with `program` (an IR Program) or `path` (an .attn file), `n`, and
    optionally `batch`, `heads`, `kv_heads`, `head_dim`, `dtype` (str or torch dtype),
    `layer` and `decode`.
    """
    if isinstance(case, Mapping) and "launches" in case:
        case = Workload.from_dict(case)
    if not isinstance(case, Workload):
        program = _get(case, "program")
        if program is None:
            from ..compiler.lower import lower
            from ..spec.resolve import load

            program = lower(load(Path(_get(case, "path", "file"))))
        shape = Shape(
            int(_get(case, "n", "N", "seq")),
            int(_get(case, "batch", "B", default=1)),
            int(_get(case, "heads", "H", default=32)),
            _get(case, "kv_heads", "H_KV"),
            int(_get(case, "head_dim", "D", default=128)),
            str(_get(case, "dtype", default="bfloat16")).removeprefix("torch."),
        )
        layer = _get(case, "layer")
        case = (
            decode_workload(program, shape, layer)
            if _get(case, "decode", default=False)
            else prefill_workload(program, shape, load_profile(profile).capability, layer)
        )
    t = getattr(time_workload(case, profile), kernel)
    return t.ms + backward_time(t, load_profile(profile).backward.get(kernel, 1.0)).ms if training else t.ms


# ------------------------------------------------------------------------------------ fitting
COST_NAMES = ("launch_us", "program_us", "full_us", "masked_us", "sink_us")


@dataclass(frozen=True)
class Measured:
    """One calibration case: a launch and its measured time (ms)."""

    name: str
    ms: float
    launch: Launch


def _critical(case: Measured, costs: TileCosts, slots: int) -> np.ndarray:
    """[1, programs, full, masked, narrow in bn_sink units] run by the slot that finishes last."""
    feats, count = case.launch.programs()
    unit = costs.unit(case.launch.heads[0].bn_narrow)
    _, per_run = schedule(feats @ unit, count, slots, case.launch.order, track=True)
    crit = per_run @ feats
    crit[3] *= case.launch.heads[0].bn_narrow / costs.bn_sink
    return np.concatenate(([1.0], crit))


def fit_kernel(
    cases: Sequence[Measured],
    start: TileCosts,
    launch_us: float,
    sms: int,
    free: Sequence[str] = COST_NAMES,
    ties: Mapping[str, tuple[str, float]] | None = None,
    rounds: int = 20,
) -> tuple[TileCosts, float]:
    """Least-squares costs (relative error) of one kernel from measured launches.

    Given the costs, a launch's time is launch_us plus the work of its critical slot, which is
    linear in the costs; the schedule (so the critical slot) is recomputed from the new costs
    and the fit repeated until it settles. `ties` fixes a cost as a multiple of another
    (`{"masked_us": ("full_us", 1.25)}`) where the cases cannot separate them; costs neither
    free nor tied keep their start values. Costs stay non-negative.
    """
    ties = dict(ties or {})
    free = [n for n in free if n not in ties]
    values = {"launch_us": launch_us, **{n: getattr(start, n) for n in COST_NAMES[1:]}}
    slots = sms * start.slots_per_sm
    y = np.array([c.ms * 1000.0 for c in cases])
    col = {n: i for i, n in enumerate(COST_NAMES)}
    for _ in range(rounds):
        costs = dataclasses.replace(start, **{n: values[n] for n in COST_NAMES[1:]})
        x = np.array([_critical(c, costs, slots) for c in cases])
        for name, (base, k) in ties.items():
            x[:, col[base]] += k * x[:, col[name]]
            x[:, col[name]] = 0.0
        rhs = y - sum(x[:, col[n]] * values[n] for n in COST_NAMES if n not in free and n not in ties)
        sol = _nnls(x[:, [col[n] for n in free]] / y[:, None], rhs / y)
        new = dict(values, **{n: float(v) for n, v in zip(free, sol)})
        new.update({name: new[base] * k for name, (base, k) in ties.items()})
        settled = all(abs(new[n] - values[n]) <= 1e-9 + 1e-7 * abs(values[n]) for n in COST_NAMES)
        values = new
        if settled:
            break
    return dataclasses.replace(start, **{n: values[n] for n in COST_NAMES[1:]}), values["launch_us"]


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of unknowns: drop the most negative and refit."""
    active = list(range(a.shape[1]))
    x = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sol >= 0).all():
            x[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return x


# --------------------------------------------------------------------- measured error (docs)
ERROR_BEGIN = "<!-- measured-error: begin (written by compiler.simulate.fill_error_section; do not edit) -->"
ERROR_END = "<!-- measured-error: end -->"
TOLERANCE = 0.15  # the bar: a prediction within 15% of the measured time


def error_table(rows: Sequence[Mapping[str, Any]], source: str = "") -> str:
    """Markdown: each measured kernel time beside its prediction, and how many are within 15%.

    `rows` are bench/gpu.py's rows: `label`, `n`, `attnc_ms` and `predicted_ms` (others are skipped).
    """
    done = [r for r in rows if r.get("attnc_ms") and r.get("predicted_ms")]
    if not done:
        return "No measured case carried a prediction."
    lines = ["| case | N | measured ms | predicted ms | error |", "|---|---:|---:|---:|---:|"]
    errors = []
    for r in done:
        err = r["predicted_ms"] / r["attnc_ms"] - 1
        errors.append((abs(err), r))
        lines.append(
            f"| {str(r['label']).replace('|', '/')} | {r['n']} | {r['attnc_ms']:.3f} | {r['predicted_ms']:.3f} | {err:+.1%} |"
        )
    within = sum(e <= TOLERANCE for e, _ in errors)
    worst, r = max(errors, key=lambda x: x[0])
    summary = (
        f"{within} of {len(done)} cells ({within / len(done):.0%}) are within {TOLERANCE:.0%} of the "
        f"measurement; the largest error is {worst:.1%} ({r['label']}, N = {r['n']})."
    )
    return "\n".join(([source, ""] if source else []) + lines + ["", summary])


def fill_error_section(
    doc: str | Path, rows: Sequence[Mapping[str, Any]], out: str | Path | None = None, source: str = ""
) -> Path:
    """Write `error_table(rows)` between the ERROR_BEGIN and ERROR_END markers of `doc` (to `out`
    when given: on the GPU machine, a file under $OUT that comes back)."""
    text = Path(doc).read_text()
    if ERROR_BEGIN not in text or ERROR_END not in text:
        raise ValueError(f"{doc} has no measured-error section: add the lines {ERROR_BEGIN!r} and {ERROR_END!r}")
    head, rest = text.split(ERROR_BEGIN, 1)
    _, tail = rest.split(ERROR_END, 1)
    path = Path(out or doc)
    path.write_text(f"{head}{ERROR_BEGIN}\n{error_table(rows, source)}\n{ERROR_END}{tail}")
    return path

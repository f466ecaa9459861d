"""Launch configurations: a small table keyed by GPU capability, dtype kind and head_dim.

Rendered into every generated module as `CONFIGS` (first match wins) and adjusted there per
pattern: tiles are capped to the pattern's chunk / power block (`_BLOCK_CAP`) so that
they align with it, narrow tiles for sink-like terms are sized to the widest one, and
causal-like patterns run their longest query blocks first (in L2-sized head groups when
a head's keys and values are small). Measured on an H100 by bench/proto (see
bench/proto/NOTES.md) where marked; the rest are conservative guesses.
"""

from __future__ import annotations

Config = dict[str, object]

# How a Hopper launch reads q, k, v, o through TMA (USE_TMA of the rows that ask for it): 2,
# host-side descriptors (encoded by the generated module's raw launch once per data address;
# Triton's own launcher would encode them at every launch); 3, descriptors the kernel builds
# on the device (in the launch's global scratch), which leave the host nothing to encode. The
# grid groups' kernel has host-side descriptors only (any non-zero value). bench/prefill_host.py
# measures them side by side: on an H100 (causal and StreamingLLM, B=1, H=32, D=128), host time
# per call 14.5-14.8 us (24.3-24.9 through Triton's launcher) against 16.5-16.8 for device
# descriptors, which also cost GPU time in every program (N = 128: 7.8 -> 11.6 us; 1024: 37.8
# -> 40.8; 4096: 288 -> 301 causal, 167 -> 186 StreamingLLM), so host ones stay.
TMA = 2
# Groups of the shape `causal & (sink(S) | window(W))` (plain causal, StreamingLLM, sliding
# windows), on Hopper (compute capability 9.x), in 16-bit inputs of head_dim 64 or 128 (the rows
# below that set `hopper`), from HOPPER_MIN_N keys on and with no window or one of at least
# HOPPER_MIN_WINDOW keys, run the Gluon kernel of codegen/support/hopper.py (FlashAttention-3's
# schedule). Causal, B=1, H=32, D=128: 0.95-1.06x SDPA's rate at 4K-128K on an H100 and an
# H200, where the generated kernel runs 0.86-0.93x. Its fixed cost per 128-row query tile (the
# pipeline's fill and drain, a whole tile for a few sinks) loses on short windows: at 32K on an
# H200 it takes 1.13x the generated kernel's time with window(1024), 0.90x with window(4096).
# Persistent for windows (one program per SM), on an H100 at 32K: 0.97-1.01x with window(1024)
# and (2048), 0.97x with window(3072), 0.89x with window(4096) (bench/proto/NOTES.md).
HOPPER_MIN_N = 4096
HOPPER_MIN_WINDOW = 3072

# Groups that run as split launches (a window, then the strided pairs per residue class: the
# plan's `split`) take 64 x 32 tiles of 4 warps on Hopper: on an H100, `causal & (window(256) |
# strided(256))` at 32K ran both launches in 1.05 ms, against 1.32 at the 128 x 64 tiles of 8
# warps (the residue launch's classes of 128 rows are one query tile each: small tiles keep
# more of them in flight), 1.16 at 64 x 64 (bench/proto/residue_sweep.py). choose_config
# states it (generated modules carry that function alone).


def _cfg(
    bm: int,
    bn: int,
    warps: int,
    stages: int,
    *,
    loop_stages: int | None = None,
    edge_stages: int = 2,
    tma: bool = False,
    grid_order: int = 0,
    maxnreg: int | None = None,
    hopper: bool = False,
) -> Config:
    return {
        "BLOCK_M": bm,
        "BLOCK_N": bn,
        "num_warps": warps,
        "num_stages": stages,
        "STAGES": stages if loop_stages is None else loop_stages,
        "EDGE_STAGES": edge_stages,
        "USE_TMA": TMA if tma else 0,
        "GRID_ORDER": grid_order,
        "WARP_SPEC": False,
        "maxnreg": maxnreg,
        "HOPPER": HOPPER_MIN_N if hopper else 0,  # band groups from this many keys: the Gluon kernel
        "HOPPER_WINDOW": HOPPER_MIN_WINDOW,  # ... if their window has at least this many keys (or none)
    }


# (minimum capability, "16bit" | "fp32", head_dim or None) -> config
CONFIGS: list[tuple[tuple[int, int], str, int | None, Config]] = [
    # Hopper (H100 / H200). bench/proto/NOTES.md: 128 x 64 tiles, 8 warps, 2-stage pipelines,
    # registers capped at 128 so that two programs share an SM, host-side TMA descriptors;
    # measured at head_dim 128 and 64.
    ((9, 0), "16bit", 128, _cfg(128, 64, 8, 2, edge_stages=2, tma=True, grid_order=2, maxnreg=128, hopper=True)),
    ((9, 0), "16bit", 64, _cfg(128, 64, 8, 2, edge_stages=2, tma=True, grid_order=2, maxnreg=128, hopper=True)),
    ((9, 0), "16bit", 256, _cfg(128, 64, 8, 2, edge_stages=2, grid_order=2)),  # no spills (sm_90 build)
    ((9, 0), "16bit", None, _cfg(128, 64, 8, 2, edge_stages=2, tma=True, grid_order=2)),
    # Ampere / Ada
    ((8, 0), "16bit", 256, _cfg(64, 32, 4, 2, edge_stages=1, grid_order=2)),
    ((8, 0), "16bit", None, _cfg(128, 64, 4, 3, edge_stages=2, grid_order=2)),
    # float32 with exact "ieee" dots (no tensor cores), any GPU: for correctness, small tiles
    # (register pressure of the ieee dot, read off sm_90 builds: larger tiles spill heavily)
    ((0, 0), "fp32", 16, _cfg(32, 32, 4, 2, edge_stages=1)),
    ((0, 0), "fp32", 32, _cfg(32, 32, 4, 2, edge_stages=1)),
    ((0, 0), "fp32", 64, _cfg(32, 16, 4, 2, edge_stages=1)),
    ((0, 0), "fp32", None, _cfg(16, 16, 4, 2, edge_stages=1)),
    # anything else
    ((0, 0), "16bit", 256, _cfg(32, 32, 4, 2, edge_stages=1)),
    ((0, 0), "16bit", None, _cfg(64, 32, 4, 2, edge_stages=1)),
]

# Grid groups (the tile-order neighbourhood kernel, grid.py.j2) try these rows first. Measured on
# an H200 (bench/proto/grid_sweep.py, D = 128, bf16, 24 heads; 128 x 128 image, kernel 13 x 13 /
# 16 x 48 x 80 video, kernel 3 x 11 x 11), ms: 64 x 64 tiles, 4 warps, 3 stages, TMA boxes
# 0.306 / 2.79; the same through pointers 0.322-0.330 / 3.25-3.33; 2 stages 0.322 / 2.95 (TMA),
# 0.358 / 3.42; 8 warps 0.503 / 7.23; 64 x 32 0.324 / 3.14 (TMA); 128 x 64 (4 or 8 warps, TMA)
# 0.385-0.494 / 3.46-4.38; 128 x 128 0.527 / 5.20; 32 x 32 0.684 / 7.68. Small query tiles make
# compact patches; the masks cost about 0-10% (the same kernel with every mask true). TMA
# (USE_TMA) only on capability 9.0 and up; config_for turns it off elsewhere.
# Without TMA (Ampere, or tensors a descriptor cannot address) the gathered 64 x 64 tiles spill
# registers in an sm_90 build (255 registers, 208 bytes of stack): 64 x 32 does not, and ran as
# fast (0.356 / 3.30 ms); the module drops to it when a Hopper launch cannot use TMA.
GRID_CONFIGS: list[tuple[tuple[int, int], str, int | None, Config]] = [
    ((9, 0), "16bit", 256, _cfg(64, 32, 4, 2, edge_stages=1)),
    ((9, 0), "16bit", None, _cfg(64, 64, 4, 3, edge_stages=1, tma=True)),
    ((8, 0), "16bit", None, _cfg(64, 32, 4, 3, edge_stages=1)),
]

# The Triton interpreter (TRITON_INTERPRET=1): small tiles, so small tests cross many tiles.
CPU_CONFIG: Config = _cfg(32, 16, 4, 1, edge_stages=1)

# The backward kernels (backward.py.j2, FlashAttention-2's). A program owns a tile of BLOCK_MAJOR
# positions (keys for dK/dV, queries for dQ) and steps over tiles of BLOCK_MINOR positions of the
# other side, as in Triton's fused-attention tutorial (32 x 128 / 128 x 32 there). Not measured
# on a GPU: guesses that keep the two float32 accumulators of the dK/dV program in registers.
BWD_CONFIGS: list[tuple[tuple[int, int], str, int | None, Config]] = [
    ((8, 0), "16bit", 256, {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 32, "num_warps": 4, "num_stages": 1}),
    ((8, 0), "16bit", 128, {"BLOCK_MAJOR": 64, "BLOCK_MINOR": 32, "num_warps": 4, "num_stages": 2}),
    ((8, 0), "16bit", None, {"BLOCK_MAJOR": 128, "BLOCK_MINOR": 32, "num_warps": 4, "num_stages": 3}),
    ((0, 0), "fp32", 16, {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 32, "num_warps": 4, "num_stages": 1}),
    ((0, 0), "fp32", None, {"BLOCK_MAJOR": 16, "BLOCK_MINOR": 16, "num_warps": 4, "num_stages": 1}),
    ((0, 0), "16bit", None, {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 32, "num_warps": 4, "num_stages": 1}),
]
BWD_CPU_CONFIG: Config = {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 16, "num_warps": 4, "num_stages": 1}


def choose_config(
    tune: dict,
    cap: tuple[int, int] | None,
    kind: str,
    head_dim: int,
    overrides: dict | None,
    configs: list,
    grid_configs: list,
    cpu_config: dict,
) -> dict:
    """The launch configuration of a pattern group: the first row of the tables that matches the
    GPU's compute capability `cap` (None: the CPU, under the interpreter), the dtype `kind`
    ("16bit" or "fp32") and head_dim; capped by the group's plan (`tune`: block_cap,
    rows_cap, narrow, grows, grid, band); then `overrides` (a dict of the same keys). HOPPER > 0:
    a group of the shape `causal & (sink(S) | window(W))` (plan tuning `band`) with W = 0 or
    W >= HOPPER_WINDOW on a Hopper GPU runs the Gluon kernel from HOPPER keys on. The tables are
    CONFIGS, GRID_CONFIGS and CPU_CONFIG (passed in: a generated module holds its own copies).

    The one definition of this rule: generated modules carry its source (config_for), and the
    simulator calls it to predict what they launch.
    """
    if cap is None:
        cfg, cap = dict(cpu_config), (0, 0)
    else:
        table = grid_configs + configs if tune["grid"] else configs
        cfg = next(
            dict(c)
            for (min_cap, k, d, c) in table
            if tuple(cap) >= tuple(min_cap) and k == kind and d in (None, head_dim)
        )
        if tune.get("split") and cap[0] >= 9 and kind == "16bit":  # split launches: small tiles (above)
            cfg.update(BLOCK_M=64, BLOCK_N=32, num_warps=4, maxnreg=None)
    rows = min(x for x in (tune["block_cap"], tune["rows_cap"], cfg["BLOCK_M"]) if x is not None)
    if tune["block_cap"] is not None:
        cfg["BLOCK_N"] = max(16, min(cfg["BLOCK_N"], tune["block_cap"]))
    if rows < cfg["BLOCK_M"]:
        cfg["BLOCK_M"] = max(16, rows)
        if cfg["BLOCK_M"] <= 64:
            cfg["num_warps"] = min(cfg["num_warps"], 4)  # one warpgroup for 64-row tiles
            cfg["maxnreg"] = None
    cfg["GRID_ORDER"] = 2 if (tune["grows"] and cfg.get("GRID_ORDER", 0) != 0) else 0
    cfg.update(overrides or {})
    if "BLOCK_N_NARROW" not in (overrides or {}):
        narrow = 16
        while narrow < tune["narrow"]:
            narrow *= 2
        cfg["BLOCK_N_NARROW"] = min(narrow, cfg["BLOCK_N"]) if tune["narrow"] else cfg["BLOCK_N"]
    if "USE_TMA" not in (overrides or {}):
        cfg["USE_TMA"] = int(cfg.get("USE_TMA", 0)) if cap[0] >= 9 else 0
    band = tune.get("band")
    gluon = band is not None and cap[0] == 9 and (band[1] == 0 or band[1] >= cfg["HOPPER_WINDOW"])
    if not gluon and "HOPPER" not in (overrides or {}):
        cfg["HOPPER"] = 0  # the Gluon kernel: causal, sink and long-window groups on Hopper only
    cfg["DOT_PREC"] = "ieee" if kind == "fp32" else "tf32"
    return cfg

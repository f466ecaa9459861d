"""Attention over several GPUs by the compiler's plans: context and head parallelism.

Two steps, on two machines (as bench/gpu.py):

    python bench/dist.py generate DIR                  # here (needs attnc): modules + plans
    python3 -m torch.distributed.run --nproc-per-node 4 bench/dist.py run DIR   # 4 GPUs
    python3 bench/dist.py run DIR                      # 1 GPU: the overlap measurement

With 4 processes (NCCL, one GPU each), B=1, H=32, D=128, bf16, N=262144 by default:

1. context parallelism of `causal & (sink(4) | window(4096))`, of `causal` and of a MoBA-like
   selection (`causal & (sink(4) | window(1024) | select(mean, top = 16, block = 128))`,
   forward only; the bytes of its block summaries, requests and chosen keys against the plan's
   bound of the chosen keys): every rank times
   the generated kernel on the whole sequence (one GPU) and `context_attention` on its shard
   (the slowest rank's time counts), checks its rows against the one-GPU output, and reports
   the bytes it moved against a ring pass's (keys and values of every other rank); then the
   same for a training step's attention (forward and backward, `train_*`: the largest
   gradient error against the one-GPU gradients, the bytes moved backward);
2. head parallelism of the DuoAttention mix (8 causal + 24 sink(64) | window(960) heads) over
   ranks 0 and 1: each times its planned heads; the slower over the faster.

With 1 process (no torchrun), for each context case and each rank r of the 4-rank plan, on one
GPU: the time of r's attention on its own keys, on the received keys, a device copy of the
bytes r receives, and the own-key attention with the copy running at the same time on a
second stream: how much of the transfer the local attention can hide (`copy_hidden`); and the
same for the backward (`bwd_*`: backward_at on r's parts, whose dK, dV shares of the received
keys, the same bytes, move back while the own-key backward runs).

Prints a table and writes $OUT/dist.json (default ./out/dist). A third word, `smoke`, runs both
steps on the CPU (gloo, TRITON_INTERPRET=1, tiny shapes) to test this script. (Positional
words, not options: torch.distributed.run would take `--run` for its own `--run-path`.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# NVLink multicast stays off (shared machines): NCCL, PyTorch's symmetric memory, NVSHMEM
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")

CASES = {
    "sink_window": ("pattern sink_window = causal & (sink(4) | window(4096))\n", "context"),
    "causal": ("pattern causal = causal\n", "context"),
    "select_mean": (
        "pattern select_mean = causal & (sink(4) | window(1024) | select(mean, top = 16, block = 128))\n",
        "context",
    ),
    "duo_mix": (
        "model { layers = 1, heads = 32, kv_heads = 32, head_dim = 128 }\n"
        "pattern duo_mix {\n  heads 0..8: causal\n  rest: causal & (sink(64) | window(960))\n}\n",
        "heads",
    ),
}
SHAPE = dict(n=262144, heads=32, head_dim=128, context_ranks=4, head_ranks=2, dtype="bfloat16", align=128)
SMOKE = dict(n=256, heads=4, head_dim=16, context_ranks=2, head_ranks=2, dtype="float32", align=32)
SMOKE_TEXT = {
    "sink_window": "pattern sink_window = causal & (sink(4) | window(40))\n",
    "select_mean": "pattern select_mean = causal & (window(8) | select(mean, top = 2, block = 32))\n",
    "duo_mix": "model { layers = 1, heads = 4, kv_heads = 4, head_dim = 16 }\n"
    "pattern duo_mix {\n  heads 0..1: causal\n  rest: causal & (sink(4) | window(24))\n}\n",
}


# ------------------------------------------------------------------ --generate (here)
def generate(out: Path, smoke: bool) -> None:
    from attnc.codegen.writer import write_module
    from attnc.compiler.distributed import plan_heads, program_contexts
    from attnc.compiler.lower import lower
    from attnc.compiler.simulate import Shape
    from attnc.spec.resolve import resolve_text

    shape = SMOKE if smoke else SHAPE
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"shape": shape, "cases": {}}
    for name, (text, kind) in CASES.items():
        text = SMOKE_TEXT.get(name, text) if smoke else text
        program = lower(resolve_text(text, f"bench/{name}.attn"))
        program = program.__class__(**{**program.__dict__, "name": f"dist_{name}"})
        entry = {"module": write_module(program, out).name, "kind": kind}
        if kind == "context":
            plan = program_contexts(program, shape["n"], shape["context_ranks"], align=shape["align"])[0]
            entry["plan"] = plan.to_dict()
        else:
            sim = Shape(shape["n"], 1, shape["heads"], None, shape["head_dim"])
            entry["plan"] = plan_heads(program, sim, shape["head_ranks"]).__dict__
        manifest["cases"][name] = entry
        print(f"{name}: {entry['module']}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


# ------------------------------------------------------------------ --run (GPU machine)
def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _time(fn, device, reps: int) -> float:
    """Median seconds of fn() (synchronised)."""
    import torch

    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def _inputs(shape, device, seed: int, heads: int | None = None):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape["dtype"])
    h = heads or shape["heads"]
    return [torch.randn(1, h, shape["n"], shape["head_dim"], device=device, dtype=dtype, generator=g) for _ in range(3)]


def run_distributed(folder: Path, smoke: bool) -> dict:
    import torch
    import torch.distributed as dist

    rt = _load(ROOT / "runtime" / "distributed.py", "attnc_dist_runtime")
    manifest = json.loads((folder / "manifest.json").read_text())
    shape = manifest["shape"]
    backend = "gloo" if smoke else "nccl"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu") if smoke else torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.all_reduce(torch.zeros(1, device=device))  # the communicators exist before any P2P
    reps = 1 if smoke else 10
    config = dict(BLOCK_M=32, BLOCK_N=32) if smoke else None
    rows = {}
    for name, entry in manifest["cases"].items():
        mod = _load(folder / entry["module"], f"attnc_dist_{name}")
        plan = entry["plan"]
        q, k, v = _inputs(shape, device, 0)
        if entry["kind"] == "context":
            if plan["ranks"] != world:
                continue
            train = {}  # a selecting pattern has no backward
            if not plan.get("selection"):
                do = _inputs(shape, device, 1)[0]
                train = _train(mod, rt, plan, q, k, v, do, rank, device, reps, config, smoke)
            full = mod.reference(q, k, v) if smoke else mod.prefill(q, k, v)
            one = _time(lambda: mod.prefill(q, k, v), device, reps) if not smoke else 0.0
            lq, lk, lv = (rt.shard(t, plan, rank) for t in (q, k, v))
            del q, k, v
            stats: dict = {}
            out, _ = rt.context_attention(mod, lq, lk, lv, plan, config=config, stats=stats)
            err = (out.float() - rt.shard(full, plan, rank).float()).abs().max().item()
            del full
            dist.barrier()
            t = _time(lambda: rt.context_attention(mod, lq, lk, lv, plan, config=config), device, reps)
            worst = torch.tensor([t, err], device=device)
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
            per_key = 2 * shape["heads"] * shape["head_dim"] * lk.element_size()
            ring = (plan["n"] - sum(b - a for a, b in plan["segments"][rank])) * per_key
            sel = plan.get("selection") or {"bound": [0] * world}
            chosen = [stats.get(f"{x}_received_bytes", 0) for x in ("score", "request", "select")]
            moved = [stats["received_bytes"], ring, *chosen, sel["bound"][rank] * per_key]
            moved = torch.tensor(moved, device=device, dtype=torch.float64)
            dist.all_reduce(moved)
            if plan.get("selection"):  # what the scores and the chosen blocks moved, against the plan's bound
                names = ("score_bytes", "request_bytes", "chosen_bytes", "chosen_bound_bytes")
                train = dict(zip(names, moved[2:].tolist()))
            rows[name] = {
                "layout": plan["layout"],
                "one_gpu_ms": one * 1e3,
                "dist_ms": worst[0].item() * 1e3,
                "speedup": one / worst[0].item() if worst[0].item() else 0.0,
                "max_abs_err_vs_one_gpu": worst[1].item(),
                "bytes_moved": moved[0].item(),
                "ring_bytes": moved[1].item(),
                "bytes_ratio": moved[1].item() / moved[0].item() if moved[0].item() else float("inf"),
                **train,
            }
        else:
            ranks = len(plan["heads"])
            times = torch.zeros(world, device=device, dtype=torch.float64)
            if rank < ranks:
                heads, kv = list(plan["heads"][rank]), list(plan["kv_heads"][rank])
                hq, hk, hv = q[:, heads].contiguous(), k[:, kv].contiguous(), v[:, kv].contiguous()
                out = rt.head_attention(mod, hq, hk, hv, plan, rank=rank, config=config)
                ref = mod.prefill(q, k, v)[:, heads] if not smoke else mod.reference(q, k, v)[:, heads]
                assert (out.float() - ref.float()).abs().max().item() < (1e-4 if smoke else 5e-2)
                del q, k, v, ref
                times[rank] = _time(
                    lambda: rt.head_attention(mod, hq, hk, hv, plan, rank=rank, config=config), device, reps
                )
            dist.all_reduce(times)
            t = times[:ranks].tolist()
            rows[name] = {
                "rank_ms": [x * 1e3 for x in t],
                "predicted_ms": list(plan["times"]),
                "slower_over_faster": max(t) / min(t) if min(t) > 0 else 0.0,
            }
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.barrier()
    dist.destroy_process_group()
    return rows if rank == 0 else {}


def _train(mod, rt, plan, q, k, v, do, rank: int, device, reps: int, config, smoke: bool) -> dict:
    """A training step's attention (forward, then backward with the output's gradient do) on
    one device and context-parallel: both times (the slowest rank's), the largest gradient
    error against the one-device gradients, and the bytes moved backward (all ranks)."""
    import torch
    import torch.distributed as dist

    reps = max(1, reps // 3)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    (mod.reference if smoke else mod.prefill)(*leaves).backward(do)
    want = [rt.shard(t.grad, plan, rank) for t in leaves]
    one = 0.0 if smoke else _time(lambda: mod.prefill(*leaves).backward(do), device, reps)
    del leaves
    mine = [rt.shard(t, plan, rank).requires_grad_() for t in (q, k, v)]
    local_do = rt.shard(do, plan, rank)

    def step(stats=None):
        out, _ = rt.context_attention(mod, *mine, plan, config=config, stats=stats)
        out.backward(local_do)

    stats: dict = {}
    step(stats)
    err = max((a.grad.float() - b.float()).abs().max().item() for a, b in zip(mine, want))
    del want
    dist.barrier()
    worst = torch.tensor([_time(step, device, reps), err], device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    moved = torch.tensor([stats["backward_sent_bytes"]], device=device, dtype=torch.float64)
    dist.all_reduce(moved)
    return {
        "train_one_gpu_ms": one * 1e3,
        "train_dist_ms": worst[0].item() * 1e3,
        "train_speedup": one / worst[0].item() if worst[0].item() else 0.0,
        "max_grad_err_vs_one_gpu": worst[1].item(),
        "backward_bytes_moved": moved[0].item(),
    }


def run_single(folder: Path, smoke: bool) -> dict:
    """One device: each rank's own-key and received-key attention, a copy of its received
    bytes, and both at once on two streams (CUDA); the same for the backward (backward_at on
    the rank's parts with the whole rows' out and lse), whose dK, dV shares of the received
    keys move back while the own-key backward runs (the same bytes, so the same copy)."""
    import torch

    manifest = json.loads((folder / "manifest.json").read_text())
    shape = manifest["shape"]
    device = torch.device("cpu" if smoke else "cuda")
    reps = 1 if smoke else 10
    config = dict(BLOCK_M=32, BLOCK_N=32) if smoke else None
    kw = {} if config is None else {"config": config}
    rows = {}
    for name, entry in manifest["cases"].items():
        if entry["kind"] != "context" or entry["plan"].get("selection"):
            continue
        mod = _load(folder / entry["module"], f"attnc_dist_{name}")
        plan = entry["plan"]
        q, k, v = _inputs(shape, device, 0)
        do = _inputs(shape, device, 1)[0]
        o, lse = mod.prefill(q, k, v, return_lse=True)
        for rank in range(plan["ranks"]):
            own = {tuple(s) for s in plan["segments"][rank]}
            local = [p for p in plan["pieces"][rank] if (p[2], p[3]) in own]
            remote = [p for p in plan["pieces"][rank] if (p[2], p[3]) not in own]

            def attend(pieces):
                for qa, qb, ka, kb in pieces:
                    mod.prefill_at(q[:, :, qa:qb], k, v, q_offset=qa, k_range=(ka, kb), **kw)

            def backward(pieces):
                for qa, qb, ka, kb in pieces:
                    rows = (do, q, k, v, o, lse)
                    rows = [t if t is k or t is v else t[:, :, qa:qb] for t in rows]
                    mod.backward_at(*rows, q_offset=qa, k_range=(ka, kb))

            ranges = [(a, b) for s, d, a, b in plan["transfers"] if d == rank]
            src = [t[:, :, a:b].permute(2, 0, 1, 3).contiguous() for a, b in ranges for t in (k, v)]
            dst = [torch.empty_like(s) for s in src]

            def copy():
                for s, d in zip(src, dst):
                    d.copy_(s, non_blocking=True)

            side = torch.cuda.Stream(device) if device.type == "cuda" else None

            def both(work):
                if side is None:
                    copy()
                    work(local)
                    return
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    copy()
                work(local)
                torch.cuda.current_stream(device).wait_stream(side)

            row = {"received_bytes": sum(s.numel() * s.element_size() for s in src)}
            t_copy = _time(copy, device, reps)
            for prefix, work, n in (("", attend, reps), ("bwd_", backward, max(1, reps // 3))):
                t_local, t_remote, t_both = (
                    _time(f, device, n) for f in (lambda: work(local), lambda: work(remote), lambda: both(work))
                )
                row |= {
                    f"{prefix}local_ms": t_local * 1e3,
                    f"{prefix}remote_ms": t_remote * 1e3,
                    f"{prefix}local_with_copy_ms": t_both * 1e3,
                    f"{prefix}copy_hidden": (t_local + t_copy - t_both) / t_copy if src else 1.0,
                }
            rows[f"{name} rank {rank}"] = {"copy_ms": t_copy * 1e3, **row}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("generate", "run"), help="generate: write modules and plans; run: run them")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("smoke", nargs="?", choices=("smoke",), help="CPU, gloo, tiny shapes (tests this script)")
    args = p.parse_args(argv)
    smoke = args.smoke == "smoke"
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    if args.mode == "generate":
        generate(args.folder, smoke)
        return 0
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rows = run_distributed(args.folder, smoke) if several else run_single(args.folder, smoke)
    if not rows:
        return 0
    out = Path(os.environ.get("OUT") or ROOT / "out" / "dist")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dist.json").write_text(json.dumps(rows, indent=1))
    for name, row in rows.items():
        print(
            f"{name:<24} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    print(f"wrote {out / 'dist.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

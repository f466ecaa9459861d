"""Which backward variant breaks on the GPU: gradients of a few modules (bf16, N=1000) against
autograd through each module's float32 reference, for module folders built with and without
the backward's loop terms, and with RESIDUE / GRID switched off.

    python3 bench/proto/bwd_variants.py DIR [DIR ...]     # GPU; each DIR holds pattern_*.py
"""

import importlib.util
import sys
from pathlib import Path

import torch

NAMES = ("pattern_s2_attention", "pattern_sparse_transformer_fixed", "bench_power", "pattern_power_attention")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bv_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def grads(mod, fn, q, k, v, dout, config=None):
    args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if config is None:
        fn(*args).backward(dout)
        return [a.grad.float() for a in args]
    o, lse = mod._forward(q, k, v, q.shape[-1] ** -0.5, True, None)
    return [g.float() for g in mod._backward(dout, q, k, v, o, lse, None, q.shape[-1] ** -0.5, None, True, True,
                                             config=config)]


def main(dirs):
    for d in dirs:
        for name in NAMES:
            path = Path(d) / f"{name}.py"
            if not path.exists():
                continue
            mod = load(path)
            model = mod.PATTERN["model"]
            heads, kv, dim = (32, 32, 128) if name.startswith("bench") else (model["heads"] if mod.PATTERN["varies_by_head"] else 8, 0, 0)
            if not kv:
                kv = model["kv_heads"] if mod.PATTERN["varies_by_head"] else heads // 2
                dim = model["head_dim"] if model["head_dim"] in (64, 128) else 128
            g = torch.Generator(device="cuda").manual_seed(1001)
            q, k, v = (torch.randn(1, h, 1000, dim, device="cuda", dtype=torch.bfloat16, generator=g) for h in (heads, kv, kv))
            dout = torch.randn(1, heads, 1000, dim, device="cuda", dtype=torch.bfloat16, generator=g)
            ref = grads(mod, mod.reference, q, k, v, dout)
            for cfg in (None, {"RESIDUE": False}, {"num_stages": 1}, {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 32, "num_stages": 1}):
                try:
                    got = grads(mod, mod.prefill, q, k, v, dout, cfg)
                    err = " ".join(f"{n} {((a - b).norm() / b.norm()).item():.1e}" for n, a, b in zip(("dq", "dk", "dv"), got, ref))
                except Exception as exc:  # noqa: BLE001
                    err = f"{type(exc).__name__}: {str(exc)[:150]}"
                print(f"{d} {name} {cfg}: {err}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Gradients of `causal & power(64)` on the GPU against the module's torch reference, for the
training demo's shape (B=8, H=8, N=4096, D=64, bf16) and a few backward configurations: finds
which one goes wrong when the demo's loss curve leaves FlexAttention's.

    python bench/proto/power_grad_check.py --generate bench/generated/power   # here
    python3 bench/proto/power_grad_check.py bench/generated/power             # GPU
"""

import argparse
import importlib.util
import sys
from pathlib import Path

PATTERNS = {"power": "pattern power = causal & power(64)\n", "window": "pattern window = causal & (sink(4) | window(512))\n"}


def generate(out: Path) -> None:
    import tempfile

    from attnc.codegen.loader import program_of
    from attnc.codegen.writer import render_module

    out.mkdir(parents=True, exist_ok=True)
    for name, text in PATTERNS.items():
        src = Path(tempfile.mkdtemp()) / f"{name}.attn"
        src.write_text(text)
        (out / f"{name}.py").write_text(render_module(program_of(src)))


def check(folder: Path, B=8, H=8, N=4096, D=64) -> None:
    import torch

    for name in PATTERNS:
        spec = importlib.util.spec_from_file_location(f"pg_{name}", folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        do = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
        qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
        mod.reference(qf, kf, vf).backward(do.float())
        ref = (qf.grad, kf.grad, vf.grad)
        o, lse = mod._forward(q, k, v, D**-0.5, True, None)
        print(name, "forward rel", ((o.float() - mod.reference(qf, kf, vf)).norm() / o.float().norm()).item())
        configs = [None, {"num_stages": 1}, {"BLOCK_MAJOR": 32, "BLOCK_MINOR": 32}, {"BLOCK_MAJOR": 128, "BLOCK_MINOR": 32}]
        for cfg in configs:
            try:
                got = mod._backward(do, q, k, v, o, lse, None, D**-0.5, None, True, True, config=cfg)
                errs = [((g.float() - r).norm() / r.norm()).item() for g, r in zip(got, ref)]
                bad = [(g.float() - r).abs().amax(-1).amax(1)[0] for g, r in zip(got, ref)]  # per row, batch 0
                worst = [int(b.argmax()) for b in bad]
                print(f"  {cfg}: dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e}; worst rows {worst}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path, nargs="?")
    p.add_argument("--generate", type=Path)
    a = p.parse_args()
    generate(a.generate) if a.generate else check(a.folder)

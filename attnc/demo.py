"""`make demo`: the whole pipeline on one pattern file, on the CPU.

Checks the file, prints its analysis at N = 32768, predicts its speed on an H100 against
dense attention, then compiles it and compares the generated Triton kernel (run by the
Triton interpreter when there is no GPU) with the module's pure-torch reference.
"""

from __future__ import annotations

import sys
import time

SEQ = 32768
CHECK_SHAPE = dict(batch=1, heads=4, kv_heads=2, n=300, head_dim=32)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "patterns/streaming_llm.attn"

    import torch

    import attnc
    from attnc.compiler import simulate
    from attnc.compiler.cache_plan import lossless_rules
    from attnc.compiler.lower import lower
    from attnc.compiler.report import analyze, render
    from attnc.spec.describe import describe
    from attnc.spec.resolve import load

    spec = load(path)
    program = lower(spec)
    print(f"== attnc check {path}\n{describe(spec, lossless_rules(program))}\n")

    print(f"== attnc analyze {path} --seq {SEQ}")
    render(analyze(program, SEQ))

    shape = simulate.Shape(SEQ, batch=1, heads=32, kv_heads=8, head_dim=128)
    pred = simulate.predict_prefill(program, shape, "h100")
    print(f"\n== attnc simulate {path} --seq {SEQ}  (B=1, H=32, D=128, bf16, H100 profile)")
    print(
        f"predicted: attnc {pred.attnc.ms:.3f} ms, SDPA dense {pred.sdpa.ms:.3f} ms "
        f"-> {pred.speedup:.1f}x faster; FlexAttention (estimate) {pred.flex.ms:.3f} ms"
    )

    started = time.perf_counter()
    module = attnc.load(path)
    print(f"\n== attnc compile {path}: {module.__file__} ({time.perf_counter() - started:.2f} s)")
    c = CHECK_SHAPE
    torch.manual_seed(0)
    q = torch.randn(c["batch"], c["heads"], c["n"], c["head_dim"])
    k = torch.randn(c["batch"], c["kv_heads"], c["n"], c["head_dim"])
    v = torch.randn_like(k)
    layer = {"layer": 0} if module.PATTERN.get("varies_by_layer") else {}
    out = module.prefill(q, k, v, **layer)
    ref = module.reference(q, k, v, **layer)
    err = (out - ref).abs().max().item()
    where = "GPU" if q.is_cuda else "Triton interpreter"
    print(
        f"kernel vs reference ({where}, fp32, N={c['n']}, GQA {c['heads']}:{c['kv_heads']}): "
        f"max abs error {err:.2e} -> {'OK' if err < 1e-4 else 'MISMATCH'}"
    )
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

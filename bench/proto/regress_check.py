"""Why a bench case runs slower than the baseline build: kernel metadata and interleaved times.

    python3 bench/proto/regress_check.py build/gpu build/gpu_base     # GPU; both from bench/gpu.py --generate

For a few bench cases: each build's compiled forward kernels (registers, spills, warps, stages,
shared memory), then the median of do_bench in alternation (three rounds): the new build, the
baseline, and the new build through Triton's full dispatch (a no-op launch hook disables the
direct launch), so that a host-side cause and a kernel-side one can be told apart.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import interleaved  # noqa: E402  (bench/timing.py)

CASES = {"bench_sink_window_4096.py": 32768, "bench_chunk.py": 32768, "bench_causal.py": 32768}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernels(mod) -> list[str]:
    out = []
    for attr in dir(mod):
        fn = getattr(mod, attr)
        for cache in getattr(fn, "device_caches", {}).values():
            for k in cache[0].values():
                md = k.metadata
                out.append(
                    f"{attr}: regs {k.n_regs} spills {k.n_spills} warps {md.num_warps} "
                    f"stages {md.num_stages} shared {md.shared}"
                )
    return out


def main() -> None:
    new_dir, old_dir = map(Path, sys.argv[1:3])
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for i, (file, n) in enumerate(CASES.items()):
        new, old = load(new_dir / file, f"new{i}"), load(old_dir / file, f"old{i}")
        q, k, v = (torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        err = (new.prefill(q, k, v).float() - old.prefill(q, k, v).float()).abs().max().item()
        print(f"\n{file} N={n}: max |new - old| {err:.2e}")
        for tag, mod in (("new", new), ("old", old)):
            for line in kernels(mod):
                print(f"  {tag} {line}")

        def dispatched():
            from triton.knobs import runtime

            def noop(*args):
                return None

            runtime.launch_enter_hook.add(noop)
            try:
                return do_bench(lambda: new.prefill(q, k, v), warmup=50, rep=300, return_mode="median")
            finally:
                runtime.launch_enter_hook.remove(noop)

        fns = [
            lambda: do_bench(lambda: new.prefill(q, k, v), warmup=50, rep=300, return_mode="median"),
            lambda: do_bench(lambda: old.prefill(q, k, v), warmup=50, rep=300, return_mode="median"),
            dispatched,
        ]
        med = interleaved(fns)
        print(f"  ms: new {med[0]:.3f}  old {med[1]:.3f}  new via dispatch {med[2]:.3f}  old/new {med[1] / med[0]:.3f}")


if __name__ == "__main__":
    main()

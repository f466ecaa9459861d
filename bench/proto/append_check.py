"""GPU check of the cache append (prompts split over programs, the last program of a head
writing its length): the Triton backend against the torch backend, for the model modules of
bench/model.py, prompts of several lengths then single steps, B = 2 (the torch backend takes no left
padding), repeated so that a race between programs would show:

    python bench/model.py generate                       # here (needs attnc)
    python3 bench/proto/append_check.py bench/generated  # GPU machine
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codegen.importing import import_module_from_path  # noqa: E402

folder = Path(sys.argv[1])
HK, D, H = 8, 128, 32
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1, a short smoke run
LENGTHS = ((70, None), (1000, None), (4097, None)) if DEV == "cuda" else ((70, None),)
bad = 0
for name in ("model_8b_causal", "model_8b_streaming", "model_8b_duo", "model_8b_power"):
    mod = import_module_from_path(folder / f"{name}.py", name)
    for T, pad in LENGTHS:
        for rep in range(3 if DEV == "cuda" else 1):
            gen = torch.Generator(device=DEV).manual_seed(rep)
            k, v = (torch.randn(2, HK, T + 3, D, device=DEV, dtype=torch.bfloat16, generator=gen) for _ in range(2))
            q = torch.randn(2, H, T + 3, D, device=DEV, dtype=torch.bfloat16, generator=gen)
            caches = [
                mod.Cache(2, device=DEV, dtype=torch.bfloat16, max_len=T + 8, backend=b) for b in ("triton", "torch")
            ]
            lengths = None if pad is None else torch.tensor([T - p for p in pad], device=DEV)
            for c in caches:
                c.append(0, k[:, :, :T], v[:, :, :T], q[:, :, :T], lengths=lengths)
                for s in range(3):
                    c.append(0, k[:, :, T + s : T + s + 1], v[:, :, T + s : T + s + 1], q[:, :, T + s : T + s + 1])
            a, b = caches[0].view(0), caches[1].view(0)
            same = a.slots == b.slots and torch.equal(a.lens, b.lens) and torch.equal(a.npos, b.npos)
            for off, n in a.slots if same else []:
                same &= torch.equal(a.pos[:, off : off + n], b.pos[:, off : off + n])
                same &= torch.equal(a.k[:, off : off + n], b.k[:, off : off + n])
                same &= torch.equal(a.v[:, off : off + n], b.v[:, off : off + n])
            bad += not same
            if not same or rep == 0:
                print(f"{name} T={T} pad={pad} rep={rep}: {'ok' if same else 'MISMATCH'}", flush=True)
print("append check:", "all equal" if bad == 0 else f"{bad} MISMATCHES")
sys.exit(1 if bad else 0)

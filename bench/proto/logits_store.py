"""Where the paged H2O decode's extra time goes: its _pg_fwd_kernel as generated (writing the
step's logits), with the logits store masked off (everything else of SCORES kept), and
without SCORES (the cache's logits unset), in CUDA graphs; the packed decode beside it.
python3 bench/proto/logits_store.py (after bench/decode_select.py generate); prints µs."""

import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_select import BUDGET, HK, PAGE, B, D, H, _graph, _prompt  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "generated" / "evict_h2o.py"
STORE = "tl.store(lg_base + offs_n[None, :], s, mask=scored & (offs_m < G)[:, None] & live[None, :])"


def load(name, text):
    path = Path("/tmp") / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


text = SRC.read_text()
assert STORE in text
variants = {"as generated": load("lg_full", text), "store masked off": load("lg_off", text.replace(STORE, "pass"))}
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(2)
k1, v1, q1 = (torch.randn(B, n, 1, D, device=dev, dtype=torch.bfloat16, generator=g) for n in (HK, HK, H))
for name, mod in variants.items():
    pages = B * HK * (-(-(BUDGET + 1) // PAGE))
    paged = mod.PagedCache(B, device=dev, dtype=torch.bfloat16, pages=pages)
    packed = mod.Cache(B, device=dev, dtype=torch.bfloat16)
    _prompt([paged, packed], 8192, B, dev, torch, True)
    for c in (paged, packed):
        for _ in range(3):
            c.append(0, k1, v1, q1)
            c.decode(0, q1)
    res = {"paged decode": _graph(lambda: paged.decode(0, q1), torch) * 1e6}
    res["paged update"] = _graph(lambda: paged.append(0, k1, v1, q1), torch) * 1e6
    L = paged._layer(0)
    lg, L.logits = L.logits, None
    res["paged decode, no SCORES"] = _graph(lambda: paged.decode(0, q1), torch) * 1e6
    L.logits = lg
    res["packed decode"] = _graph(lambda: packed.decode(0, q1), torch) * 1e6
    print(name, {k: round(v, 1) for k, v in res.items()}, flush=True)

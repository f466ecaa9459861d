"""How the H2O update kernel's splits change its time: _KV_UPD_PER_SM (programs an SM) and
_KV_UPD_TILE (the most logits a tile) of the generated module set before its caches are
built; the update alone in a CUDA graph (step minus decode), packed and paged, after three
evicting steps. python3 bench/proto/update_splits.py [PER_SM,TILE ...] (after bench/decode_select.py
generate; default: 4,4096 8,4096)."""

import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_select import BUDGET, HK, PAGE, B, D, H, _graph, _prompt  # noqa: E402

GEN = Path(__file__).resolve().parents[1] / "generated"
spec = importlib.util.spec_from_file_location("upd", GEN / os.environ.get("UPD_MODULE", "evict_h2o.py"))
mod = importlib.util.module_from_spec(spec)
sys.modules["upd"] = mod
spec.loader.exec_module(mod)
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(2)
k1, v1, q1 = (torch.randn(B, n, 1, D, device=dev, dtype=torch.bfloat16, generator=g) for n in (HK, HK, H))
PLAN = [(int(a), int(b)) for a, b in (x.split(",") for x in sys.argv[1:])] or [(4, 4096), (8, 4096)]
for per_sm, tile in PLAN:
    mod._KV_UPD_PER_SM, mod._KV_UPD_TILE = per_sm, tile
    row = {}
    for label in ("packed", "paged"):
        if label == "paged":
            c = mod.PagedCache(B, device=dev, dtype=torch.bfloat16, pages=B * HK * (-(-(BUDGET + 1) // PAGE)))
        else:
            c = mod.Cache(B, device=dev, dtype=torch.bfloat16)
        _prompt([c], 8192, B, dev, torch, True)
        for _ in range(3):
            c.append(0, k1, v1, q1)
            c.decode(0, q1)
        step = _graph(lambda c=c: (c.append(0, k1, v1, q1), c.decode(0, q1)), torch) * 1e6
        dec = _graph(lambda c=c: c.decode(0, q1), torch) * 1e6
        row[label] = (round(step, 1), round(step - dec, 1))
        geo = next(iter(c._layer(0).classes[0].geo.values())) if hasattr(c, "_layer") else None
        del c
    print(f"per SM {per_sm}, tile {tile}: (step, update) graph us {row}, geometry {geo}", flush=True)

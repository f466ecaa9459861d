"""Where the paged H2O decode's extra time goes: its _pg_fwd_kernel as generated (writing the
step's logits), with the logits store masked off (everything else of SCORES kept), and
without SCORES (the cache's logits unset), in CUDA graphs; the packed decode beside it.
python3 bench/proto/logits_store.py [VARIANT ...] (after bench/decode_select.py generate); prints µs."""

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
VECTOR = (  # 16-byte stores (the coalescer needs the mask constant over 4 logits and the rows aligned)
    "tl.store(lg_base + tl.max_contiguous(tl.multiple_of(offs_n, 16), 16)[None, :], s, "
    "mask=scored & (offs_m < G)[:, None] & tl.max_constancy(live, 16)[None, :])"
)
PAGED_SO = "            so = tl.load(SOFF + h)\n"  # the paged kernel's (the packed one's is indented less)
vector = text.replace(STORE, VECTOR).replace(
    PAGED_SO, PAGED_SO.replace("tl.load(SOFF + h)", "tl.multiple_of(tl.load(SOFF + h), 16)")
)
ASM1 = (  # a predicated scalar store per logit from the dot's own layout: no layout conversion
    'tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; mov.b32 $0, 0; }", '
    '"=r,l,r,r", [lg_base + offs_n[None, :], s.to(tl.int32, bitcast=True), '
    "(scored & (offs_m < G)[:, None] & live[None, :]).to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)"
)
ASM2 = (  # the same, two neighbouring logits of a thread in one 8-byte store
    'tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $6, 0; @p st.global.v2.b32 [$2], {$4, $5}; '
    'mov.b32 $0, 0; mov.b32 $1, 0; }", "=r,=r,l,l,r,r,r,r", [lg_base + offs_n[None, :], s.to(tl.int32, bitcast=True), '
    "(scored & (offs_m < G)[:, None] & live[None, :]).to(tl.int32)], dtype=tl.int32, is_pure=False, pack=2)"
)
variants = {
    "as generated": load("lg_full", text),
    "store masked off": load("lg_off", text.replace(STORE, "pass")),
    "16-byte stores": load("lg_vec", vector),
    "asm scalar stores": load("lg_asm1", text.replace(STORE, ASM1)),
    "asm 8-byte stores": load("lg_asm2", text.replace(STORE, ASM2)),
}
LAST = STORE.replace("live[None, :])", 'live[None, :], eviction_policy="evict_last")')
KLOAD = "k = tl.load(K + slot[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0)"
VLOAD = "v = tl.load(V + slot[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0)"
stream = text.replace(STORE, LAST)
for load_ in (KLOAD, VLOAD):
    stream = stream.replace(load_, load_.replace("other=0.0)", 'other=0.0, eviction_policy="evict_first")'))
variants["logits kept in L2"] = load("lg_last", text.replace(STORE, LAST))
variants["logits kept, keys streamed"] = load("lg_stream", stream)
if sys.argv[1:]:  # the variants named (and the generated one, the reference)
    variants = {k: m for k, m in variants.items() if k in sys.argv[1:] or k == "as generated"}
final = {}
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
    res["paged step"] = _graph(lambda: (paged.append(0, k1, v1, q1), paged.decode(0, q1)), torch) * 1e6
    L = paged._layer(0)
    lg, L.logits = L.logits, None
    res["paged decode, no SCORES"] = _graph(lambda: paged.decode(0, q1), torch) * 1e6
    L.logits = lg
    res["packed decode"] = _graph(lambda: packed.decode(0, q1), torch) * 1e6
    for _ in range(3):  # evictions follow the logits: positions kept and the output say whether they were right
        paged.append(0, k1, v1, q1)
        out = paged.decode(0, q1)
    final[name] = ([paged.kept(0, b, h) for b in range(B) for h in range(HK)], out.float())
    ref_kept, ref_out = final["as generated"]
    same = final[name][0] == ref_kept
    err = ((out.float() - ref_out).norm() / ref_out.norm()).item()
    print(name, {k: round(v, 1) for k, v in res.items()}, f"same positions as generated: {same}, rel_err {err:.2e}")

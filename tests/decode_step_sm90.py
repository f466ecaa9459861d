"""Compile the decode-step kernels of a generated module for Hopper (sm_90) through Triton's
own ptxas: the paged cache's page scores, top-k (one block in registers, and blocks in a
loop) and attention over the read lists (also writing H2O / TOVA logits), the H2O / TOVA
update (packed and through page lists), the decode kernel that writes their logits and the
lossless paged cache's quiet step. Run by
tests/test_paged_cache.py in a subprocess: python tests/decode_step_sm90.py MODULE.py;
prints {kernel: [shared bytes, registers, stack bytes]}."""

import json
import sys

from attnc.codegen.importing import import_module_from_path
from sm90_usage import usage

mod = import_module_from_path(sys.argv[1], "decode_step_sm90_mod")


out = {}
types = dict(Q="*bf16", SA="*fp8e4nv", SB="*fp8e4nv", SS="*fp32", LIST="*i32", NTOK="*i32", HI="*i64", OUT="*fp32")
types.update({n: "i32" for n in ("T", "NU", "LW", "NH", "page", "sink", "recent")})
out["score"] = usage(mod._pg_score_kernel, types, dict(H_KV=8, G=4, HEAD_DIM=128, RP=1, USZ=16, MODE=0, AGG=0,
                     BLOCK_M=16, BLOCK_U=64, DOT_PREC="tf32", UPCAST=False, SCALED=True, STEPS=8), 4)  # fmt: skip
types = dict(SC="*fp32", LIST="*i32", NTOK="*i32", HI="*i64", CHOSEN="*i32", SEL="*i32", SLEN="*i32")
types.update({n: "i32" for n in ("T", "NU", "LW", "SW", "NH", "units", "sink", "recent")})
for one, block in ((True, mod._PG_TOPK_BLOCK), (False, 1024)):
    out[f"topk_one_{one}"] = usage(mod._pg_topk_kernel, types, dict(H_KV=8, P=16, TOKENS=False, BLOCK=block, ONE=one,
                                   RADIX=mod._PG_RADIX, WS_PAD=1, WL_PAD=2, CH_PAD=256), 8)  # fmt: skip
types = {
    n: "*i32" for n in ("POS", "LIST", "LLEN", "SEL", "SLEN", "SELH", "UNITS", "SINKS", "LO", "NTOK", "GID", "CNT")
}
types.update(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", PM="*fp32", PL="*fp32", PACC="*fp32", qk_scale="fp32")
types.update({n: "i32" for n in ("T", "SPLIT", "NS", "NB", "LW", "SW")})
cfg = mod.DecodeConfig()
fwd = dict(H_KV=8, G=4, HEAD_DIM=128, BLOCK_M=16, BLOCK_N=cfg.block_n, STAGES=cfg.stages, DOT_PREC="tf32", UPCAST=False)
out["attend"] = usage(mod._pg_fwd_kernel, types, dict(SCORES=False, LGS=1, LG=None, LSE=None, SOFF=None, **fwd),
                      cfg.num_warps)  # fmt: skip
types.update(LG="*fp32", LSE="*fp32", SOFF="*i32")
out["attend_scores"] = usage(mod._pg_fwd_kernel, types, dict(SCORES=True, LGS=4112, **fwd), cfg.num_warps)
types = dict(KN="*bf16", VN="*bf16", K="*bf16", V="*bf16", POS="*i32", SCORE="*fp32", HPOS="*i32", LENS="*i32", NPOS="*i32",
             LG="*fp32", LSE="*fp32", PB="*i32", CNT="*i32", IDX="*i64", LIST="*i32", PEND="*i32")  # fmt: skip
types.update({n: "i32" for n in ("NH", "E", "A", "CAP", "SLOTS", "LGS", "SO0", "SPLIT", "NS", "SINK", "RECENT",
                                 "BUDGET", "LW", "H0")})  # fmt: skip
split, ns, tile = mod._kv_update_geometry(4096, 8, 8, 4, 132)  # the benchmark's shape on an H100
block = dict(H_KV=8, G=4, HEAD_DIM=128, BLOCK_G=4, BLOCK_N=tile, BLOCK_NS=mod.pow2_at_least(ns), SENT=1 << 30, AGG=0,
             FOLD=True, ADVANCE=True, RUN=True)  # fmt: skip
packed = {n: t for n, t in types.items() if n not in ("LIST", "PEND")}  # the packed launch passes None there
for name, tova in (("h2o_update", False), ("tova_update", True)):
    out[name] = usage(
        mod._kv_update_kernel, packed, dict(TOVA=tova, EVICT=True, PAGE=0, LIST=None, PEND=None, **block), 4
    )
out["h2o_update_paged"] = usage(mod._kv_update_kernel, types, dict(TOVA=False, EVICT=True, PAGE=16, **block), 4)
types = {n: "*i32" for n in ("POS", "LENS", "OFFS", "GID", "CNT", "NPOS", "SOFF", "TAB", "KCNT", "ARRIVE")}
types.update(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", PM="*fp32", PL="*fp32", PACC="*fp32", LG="*fp32",
             LSE="*fp32", KN="*bf16", VN="*bf16", qk_scale="fp32")  # fmt: skip
types.update({n: "i32" for n in ("T", "SPLIT", "NSPLIT", "W", "SLOTS")})
out["decode_scores"] = usage(mod._dec_fwd_kernel, types, dict(H_KV=8, G=4, HEAD_DIM=128, BLOCK_M=16,
                             BLOCK_N=cfg.block_n, STAGES=cfg.stages, MASKED=False, REDUCE=2, DOT_PREC="tf32",
                             UPCAST=False, SCORES=True, LGS=4160, APPEND=False, CW=1), cfg.num_warps)  # fmt: skip
types = {n: "*i32" for n in ("POS", "LIST", "LLEN", "TLEN", "LO", "STEP", "SINKS", "NSINK", "LP0", "NPOS", "NTOK")}
types.update(KN="*bf16", VN="*bf16", K="*bf16", V="*bf16", LW="i32")
out["paged_append"] = usage(mod._pg_append_kernel, types, dict(H_KV=8, HEAD_DIM=128, PAGE=16, SENT=1 << 30,
                            BLOCK_W=128), 1)  # fmt: skip
print(json.dumps(out))

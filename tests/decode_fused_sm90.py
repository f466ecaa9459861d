"""Compile a generated module's decode kernel for Hopper (sm_90) through Triton's own ptxas,
with and without the fused append (APPEND), and the cache's append kernel (bf16, D = 128,
8 KV heads of 4 query heads). Run by tests/test_decode_fused.py in a subprocess:
python tests/decode_fused_sm90.py MODULE.py; prints {kernel: [shared bytes, registers, stack bytes]}."""

import json
import sys

from attnc.codegen.importing import import_module_from_path
from sm90_usage import usage

mod = import_module_from_path(sys.argv[1], "decode_fused_sm90_mod")


out = {}
types = {n: "*i32" for n in ("POS", "LENS", "OFFS", "GID", "CNT", "NPOS", "TAB", "KCNT", "ARRIVE", "SOFF")}
types.update(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", KN="*bf16", VN="*bf16", PM="*fp32", PL="*fp32", PACC="*fp32")
types.update(LG="*fp32", LSE="*fp32")
types.update({n: "i32" for n in ("T", "SPLIT", "NSPLIT", "W", "SLOTS")}, qk_scale="fp32")
cfg = mod.DecodeConfig()
for append in (False, True):
    for reduce in (0, 2):
        kw = dict(H_KV=8, G=4, HEAD_DIM=128, BLOCK_M=16, BLOCK_N=cfg.block_n, STAGES=cfg.stages, MASKED=True,
                  REDUCE=reduce, DOT_PREC="tf32", UPCAST=False, APPEND=append, CW=2, SCORES=False, LGS=1)  # fmt: skip
        out[f"decode_append_{append}_reduce_{reduce}"] = usage(mod._dec_fwd_kernel, types, kw, cfg.num_warps)
types = {n: "*i32" for n in ("POS", "LENS", "NPOS", "TAB", "CNT", "DONE")}
types.update(KN="*bf16", VN="*bf16", K="*bf16", V="*bf16", T="i32", SLOTS="i32")
for split in (False, True):
    kw = dict(H_KV=8, CW=2, HEAD_DIM=128, BLOCK_T=64 if split else 1, SKIP_LOSSY=False, SPLIT_T=split)
    out[f"append_split_{split}"] = usage(mod._kv_append_kernel, types, kw, 4)
print(json.dumps(out))

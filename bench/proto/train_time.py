"""Forward + backward timings of bench/gpu.py's cases alone (no checks, no baseline): attnc,
FlexAttention with the same mask and SDPA. python3 bench/proto/train_time.py DIR [CASE ...]"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gpu  # noqa: E402  (bench/gpu.py)

folder = Path(sys.argv[1])
only = set(sys.argv[2:])
manifest = json.loads((folder / "manifest.json").read_text())
flex_fn = torch.compile(gpu.flex_attention_fn(), dynamic=False) if hasattr(gpu, "flex_attention_fn") else None
if flex_fn is None:
    from torch.nn.attention.flex_attention import flex_attention

    flex_fn = torch.compile(flex_attention, dynamic=False)
rows = []
for m in manifest["modules"]:
    if not m["bench"] or (only and Path(m["file"]).stem.removeprefix("bench_") not in only):
        continue
    mod = gpu.import_module(folder / m["file"])
    for n in m["bench"]["lengths"]:
        r = {"label": m["bench"]["label"], "n": n}
        try:
            r.update(gpu.time_training(mod, n, flex_fn, m["bench"].get("heads", gpu.H), m["bench"].get("causal", True)))
        except Exception as exc:  # noqa: BLE001
            r["fb_error"] = f"{type(exc).__name__}: {exc}"[:300]
        r["predicted_fb_ms"] = gpu.simulate.predict(m["bench"]["workloads"][str(n)], profile=gpu.PROFILE, training=True)
        rows.append(r)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
print(gpu.render_training(rows))

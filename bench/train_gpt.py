"""Training demo: a small GPT trained with a sparse attention pattern, through attnc's generated
kernels and through FlexAttention with the same mask, on the same data in the same order.

Three steps, on two machines:

    python bench/train_gpt.py --generate DIR        # here (needs attnc): the modules and the text
    python3 bench/train_gpt.py --run DIR            # GPU machine (torch + triton only):
                                                    #   $OUT/train_gpt.json (default ./out/train_gpt)
    python bench/train_gpt.py --plot JSON [PNG]     # here (matplotlib): docs/img/training_loss.png
    python bench/train_gpt.py --smoke               # all three on the CPU, tiny sizes (TRITON_INTERPRET=1)

The model: byte-level GPT (vocabulary 256), 6 layers, 8 heads of 64, context 4096, learned
positions, pre-LayerNorm, GELU MLP, tied embeddings; AdamW, bf16 autocast, the loss function
(forward and backward) under torch.compile(fullgraph=True) when that works, else eager (the
JSON says which). The text: CPython's reference documentation topics (`pydoc_data`, what
`attnc eval` streams), or the standard library's sources where pydoc_data is missing.

Per pattern, attnc trains for --seconds after its first (compiling) step; FlexAttention then
trains the same number of steps from the same initial weights and batches. Every run and its
compile stay inside --budget seconds in all (the runs shorten to fit). The JSON holds, per
run, the loss of every step, the seconds per step and the tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PATTERNS = {
    "sink_window": "causal & (sink(4) | window(512))",
    "power": "causal & power(64)",
}
TEXT = "text.txt"
WARM_STEPS = 5  # steps left out of tokens/s (compilation, autotuning)


@dataclass
class Config:
    layers: int = 6
    heads: int = 8
    head_dim: int = 64
    context: int = 4096
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0
    seconds: float = 60.0  # attnc's training time per pattern (after its first step)
    flex_cap: float = 1.5  # FlexAttention may take this many times attnc's seconds
    budget: float = 360.0  # the whole run, compiles included (each run gets its share of what is left)
    device: str = "cuda"
    compile: bool = True
    backend: str = "inductor"  # torch.compile's backend (the CPU smoke test: aot_eager)
    max_steps: int = 100_000


# ------------------------------------------------------------------ --generate (here)
def generate(out: Path) -> None:
    """The two patterns' modules and the training text into `out`."""
    from attnc.codegen.writer import write_module
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, text in PATTERNS.items():
        program = lower(resolve_text(f"pattern train_{name} = {text}\n", f"bench/train_{name}.attn"))
        files[name] = write_module(program, out).name
    (out / TEXT).write_bytes(training_text().encode("utf-8"))
    (out / "manifest.json").write_text(json.dumps({"modules": files, "patterns": PATTERNS}, indent=1))
    print(f"wrote {', '.join(files.values())} and {TEXT} to {out}")


def training_text() -> str:
    """The documentation text `attnc eval` streams, or the standard library's sources without it."""
    try:
        from attnc.runtime.evaluate import long_text

        return long_text()
    except ImportError:
        import sysconfig

        lib = Path(sysconfig.get_paths()["stdlib"])
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("*.py")))


# ------------------------------------------------------------------ the model (GPU machine)
def build_model(cfg: Config, attend):
    """A byte-level GPT whose attention is `attend(q, k, v)` on (B, H, N, D) views."""
    import torch
    from torch import nn

    dim = cfg.heads * cfg.head_dim

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.proj = nn.Linear(dim, dim, bias=False)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, cfg.heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
            x = x + self.proj(attend(q, k, v).transpose(1, 2).reshape(B, N, dim))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(256, dim)
            nn.init.normal_(self.tok.weight, std=0.02)  # tied to the output: logits start near 0
            self.pos = nn.Parameter(torch.randn(cfg.context, dim) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.ln = nn.LayerNorm(dim)

        def forward(self, idx):
            x = self.tok(idx) + self.pos[: idx.shape[1]]
            for b in self.blocks:
                x = b(x)
            return self.ln(x) @ self.tok.weight.T

    torch.manual_seed(cfg.seed)
    return GPT().to(cfg.device)


def batches(cfg: Config, data):
    """The training batches, in an order fixed by the seed: (inputs, targets) of context bytes."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    while True:
        starts = torch.randint(0, data.numel() - cfg.context - 1, (cfg.batch,), generator=gen)
        rows = torch.stack([data[s : s + cfg.context + 1] for s in starts.tolist()]).to(cfg.device).long()
        yield rows[:, :-1], rows[:, 1:]


def train(cfg: Config, data, attend, steps: int | None, seconds: float, deadline: float) -> dict:
    """Train one model: `steps` steps (None: as many as fit in `seconds` after the first step),
    stopping early after `seconds` anyway, or at the `deadline` (perf_counter time, compiles
    included). Returns the per-step losses and times."""
    import torch
    import torch.nn.functional as F

    model = build_model(cfg, attend)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))

    def loss_fn(x, y):
        with torch.autocast(cfg.device, dtype=torch.bfloat16):
            logits = model(x)
        return F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1))

    def forward_backward(fn, x, y):
        loss = fn(x, y)
        loss.backward()
        return loss

    compiled = torch.compile(loss_fn, fullgraph=True, backend=cfg.backend) if cfg.compile else loss_fn
    mode = "compile" if cfg.compile else "eager"
    losses, times, error = [], [], None
    t_start = time.perf_counter()
    for step, (x, y) in enumerate(batches(cfg, data)):
        if step >= (steps if steps is not None else cfg.max_steps):
            break
        t0 = time.perf_counter()
        try:
            loss = forward_backward(compiled, x, y)
        except Exception as exc:  # noqa: BLE001  (torch.compile failed: eager, and say so)
            if step or compiled is loss_fn:
                raise
            error = f"{type(exc).__name__}: {exc}"[:400]
            print(f"torch.compile failed, eager instead: {error}", flush=True)
            compiled, mode = loss_fn, "eager"
            opt.zero_grad(set_to_none=True)
            loss = forward_backward(compiled, x, y)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())  # synchronises: the step's time is its GPU time
        times.append(time.perf_counter() - t0)
        if step % 50 == 0:
            print(f"  step {step:5d}  loss {losses[-1]:.4f}  {times[-1] * 1e3:.1f} ms", flush=True)
        now = time.perf_counter()
        if now - t_start - times[0] > seconds or now > deadline:
            break
    timed = times[WARM_STEPS:] or times
    tokens = cfg.batch * cfg.context
    return {
        "mode": mode,
        "compile_error": error,
        "steps": len(losses),
        "loss": losses,
        "step_s": times,
        "first_step_s": times[0],
        "tokens_per_s": tokens * len(timed) / sum(timed),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


def run(folder: Path, cfg: Config, out: Path) -> dict:
    """Per pattern: attnc for cfg.seconds, then FlexAttention for as many steps; the JSON to `out`."""
    import torch

    from codegen.importing import import_module_from_path
    from gpu import mask_mod_of  # bench/gpu.py: FlexAttention's mask_mod from the module's predicate

    t_all = time.perf_counter()
    manifest = json.loads((folder / "manifest.json").read_text())
    data = torch.frombuffer(bytearray((folder / TEXT).read_bytes()), dtype=torch.uint8)
    result = {
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name() if cfg.device == "cuda" else cfg.device,
        "torch": torch.__version__,
        "text_bytes": data.numel(),
        "runs": [],
    }
    left = 2 * len(manifest["modules"])
    for name, file in manifest["modules"].items():
        mod = import_module_from_path(folder / file, f"attnc_train_{Path(file).stem}")
        mask_mod, _ = mask_mod_of(mod, cfg.device)
        steps = None
        for backend, attend in (("attnc", lambda q, k, v: mod.prefill(q, k, v)), flex_attend(cfg, mask_mod)):
            now = time.perf_counter()
            deadline = now + (cfg.budget - (now - t_all)) / left  # compile included
            seconds = cfg.seconds * (1 if steps is None else cfg.flex_cap)
            print(f"{name} ({manifest['patterns'][name]}), {backend}: up to {deadline - now:.0f} s", flush=True)
            r = train(cfg, data, attend, steps, seconds, deadline)
            steps = steps or r["steps"]
            r.update(pattern=manifest["patterns"][name], name=name, backend=backend)
            r["epochs"] = r["steps"] * cfg.batch * cfg.context / data.numel()  # passes over the text
            result["runs"].append(r)
            left -= 1
            print(
                f"{name} {backend}: {r['steps']} steps ({r['mode']}), {r['tokens_per_s']:,.0f} tokens/s, "
                f"final loss {r['final_loss']:.4f}, first step {r['first_step_s']:.1f} s, {r['epochs']:.1f} epochs",
                flush=True,
            )
            torch.cuda.empty_cache() if cfg.device == "cuda" else None
    result["wall_s"] = time.perf_counter() - t_all
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_gpt.json").write_text(json.dumps(result))
    print(table(result))
    print(f"wrote {out / 'train_gpt.json'} ({result['wall_s']:.0f} s in all)")
    return result


def flex_attend(cfg: Config, mask_mod):
    """("flex", attend) with FlexAttention on the mask_mod, its block mask built once; on the
    CPU, which FlexAttention's backward does not run on, ("sdpa-mask", SDPA with the dense mask)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

    n = cfg.context
    if cfg.device == "cpu":
        mask = create_mask(mask_mod, None, None, n, n, device="cpu")
        return "sdpa-mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=cfg.device)
    flex = torch.compile(flex_attention, dynamic=False) if cfg.compile else flex_attention
    return "flex", lambda q, k, v: flex(q, k, v, block_mask=block_mask)


def table(result: dict) -> str:
    """The markdown table of docs/training.md's demo section."""
    lines = [
        "| pattern | attention | steps | tokens/s | loss (last 20 steps) | mode |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        pattern = r["pattern"].replace("|", "\\|")
        lines.append(
            f"| `{pattern}` | {r['backend']} | {r['steps']} | {r['tokens_per_s']:,.0f} | "
            f"{r['final_loss']:.3f} | {r['mode']} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ --plot (here)
def plot(path: Path, png: Path) -> None:
    """Per pattern: the loss per step of attnc and FlexAttention (above) and their difference (below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(path.read_text())
    names = list(dict.fromkeys(r["name"] for r in result["runs"]))
    fig, axes = plt.subplots(
        2, len(names), figsize=(6 * len(names), 5.5), squeeze=False, sharex="col", height_ratios=(3, 1)
    )
    for col, name in enumerate(names):
        runs = [r for r in result["runs"] if r["name"] == name]
        top, bottom = axes[0][col], axes[1][col]
        for r in runs:
            top.plot(
                smooth(r["loss"]),
                label=f"{r['backend']} ({r['tokens_per_s'] / 1e3:,.1f}k tokens/s)",
                lw=1.2,
                ls="-" if r["backend"] == "attnc" else "--",
            )
        top.set_title(runs[0]["pattern"], fontsize=10)
        top.set_ylabel("training loss (nats/byte, 10-step mean)")
        top.legend()
        top.grid(alpha=0.3)
        if len(runs) == 2:
            steps = min(len(runs[0]["loss"]), len(runs[1]["loss"]))
            diff = [a - b for a, b in zip(runs[0]["loss"][:steps], runs[1]["loss"][:steps])]
            bottom.plot(diff, lw=0.6, color="gray")
            bottom.axhline(0, color="black", lw=0.5)
        bottom.set_ylabel(f"{runs[0]['backend']} - {runs[-1]['backend']}")
        bottom.set_xlabel("step")
        bottom.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(
        f"GPT, {cfg['layers']} layers, {cfg['heads']} heads x {cfg['head_dim']}, context {cfg['context']}, "
        f"batch {cfg['batch']}, bf16, {result['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def smooth(xs: list[float], width: int = 10) -> list[float]:
    """Trailing mean over `width` steps (the raw loss is noisy per batch)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x - (xs[i - width] if i >= width else 0.0)
        out.append(acc / min(i + 1, width))
    return out


# ------------------------------------------------------------------ entry points
def out_dir() -> Path:
    return Path(os.environ.get("OUT") or ROOT / "out" / "train_gpt")


def smoke() -> None:
    """The three steps on the CPU with tiny sizes: the script's own test."""
    os.environ["TRITON_INTERPRET"] = "1"
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="train_gpt_"))
    generate(folder)
    cfg = Config(layers=2, heads=2, head_dim=16, context=128, batch=2, warmup=2, seconds=60, budget=600, device="cpu")
    cfg.max_steps, cfg.backend = 4, "aot_eager"
    out = out_dir() / "smoke"
    run(folder, cfg, out)
    plot(out / "train_gpt.json", out / "training_loss.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--generate", type=Path, metavar="DIR", help="write the modules and the text into DIR (here)")
    g.add_argument("--run", type=Path, metavar="DIR", help="train on the GPU from DIR")
    g.add_argument("--plot", type=Path, nargs="+", metavar=("JSON", "PNG"), help="draw the loss curves")
    g.add_argument("--smoke", action="store_true", help="all steps on the CPU, tiny sizes")
    p.add_argument("--seconds", type=float, default=Config.seconds, help="attnc's training seconds per pattern")
    p.add_argument("--budget", type=float, default=Config.budget, help="seconds for the whole --run")
    p.add_argument("--eager", action="store_true", help="no torch.compile")
    args = p.parse_args(argv)
    if args.generate:
        generate(args.generate)
    elif args.run:
        run(args.run, Config(seconds=args.seconds, budget=args.budget, compile=not args.eager), out_dir())
    elif args.plot:
        plot(args.plot[0], Path(args.plot[1]) if len(args.plot) > 1 else ROOT / "docs" / "img" / "training_loss.png")
    else:
        smoke()
    return 0


if __name__ == "__main__":
    sys.exit(main())

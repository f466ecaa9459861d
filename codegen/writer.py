"""From an IR Program to a Python module on disk: render, check, write atomically, reuse.

`render_module` fills `templates/module.py.j2` (which includes the kernel part
`prefill.py.j2`, and `grid.py.j2`, `decode.py.j2`, `cache.py.j2` where they apply) with
explicit parameters. What does not vary per pattern is ordinary Python in `support/`, which
the templates inline verbatim with `{{ support("name") }}` (see `support_source`).
`environment()` is the one Jinja environment; `render_decode_module` renders the decode
and cache part alone (tests, benchmarks).
`write_module` compiles the text (a syntax check), then writes it through a temporary file
and `os.replace`, so a reader never sees a half-written module and an error leaves no
file behind. Modules are cached as `<name>_<digest>.py` under `$ATTNC_CACHE` (default
`~/.cache/attnc`); an identical file is left untouched.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import os
import pprint
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jinja2

from ..compiler import configs
from ..compiler.ir import Program
from ..compiler.plan import plan_program
from . import masks
from .decode_plan import DecodePlan, decode_context
from .importing import compile_text, import_module_from_path
from .plan_text import GroupText

TEMPLATES = Path(__file__).parent / "templates"
SUPPORT = Path(__file__).parent / "support"


def attnc_version() -> str:
    try:
        from importlib.metadata import version

        return version("attnc")
    except Exception:  # not installed (a source checkout on sys.path)
        return "0+unknown"


def _pyrepr(value: Any) -> str:
    """A Python literal for a value; user text enters generated code only through this."""
    return pprint.pformat(value, width=100, compact=True, sort_dicts=False)


def _docsafe(text: str) -> str:
    """Text that cannot end a triple-quoted docstring or start an escape inside it."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


@functools.lru_cache(maxsize=None)
def support_source(name: str) -> str:
    """The text of support/<name>.py as it is inlined into a generated module: verbatim, less
    its module docstring, `from __future__` imports and sibling imports (`from .x import ...`;
    the siblings are inlined into the same module, earlier: support.INLINE_ORDER)."""
    text = (SUPPORT / f"{name}.py").read_text()
    drop = _dropped_lines(text)
    lines = [line for i, line in enumerate(text.splitlines(), 1) if i not in drop]
    body = "\n".join(lines).strip("\n")
    return f"# {'-' * 66} codegen/support/{name}.py (inlined)\n{body}\n"


def _dropped_lines(text: str) -> set[int]:
    """support_source's lines to drop, parsing only the lines before the first definition (not
    the whole file: most of compile's work on it) unless a `from` comes later or they don't parse."""
    first = re.search(r"^(?:def|class|async def|@)\b", text, re.M)
    late = first is None or re.search(r"^from\b|;\s*from\b", text[first.start() :], re.M)
    try:
        nodes = ast.parse(text if late else text[: first.start()]).body
    except SyntaxError:
        nodes = ast.parse(text).body
    drop: set[int] = set()
    for node in nodes:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.lineno == 1
        relative = isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__")
        if docstring or relative:
            drop.update(range(node.lineno, node.end_lineno + 1))
    return drop


def compiler_source(name: str) -> str:
    """The source of a function of compiler/configs.py that generated modules carry (the one
    definition of a rule that the simulator also runs), as written there."""
    return f"# compiler/configs.py: {name} (inlined)\n" + inspect.getsource(getattr(configs, name)).strip("\n")


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates in a private folder of the temporary directory; one
    that cannot be written (a full disk) only costs the time of compiling them again."""

    def dump_bytecode(self, bucket: Any) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return _BytecodeCache()
    except (OSError, RuntimeError):  # no private temporary folder: compile templates every time
        return None


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment of attnc's templates. Compiled templates are kept in Jinja's
    bytecode cache in the temporary directory (keyed by the template's text), so a later
    process loads them instead of compiling them again (a third of `attnc compile`'s time)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = _pyrepr
    env.filters["docsafe"] = _docsafe
    env.filters["conjunction"] = masks.render_lits
    env.globals["support"] = support_source
    env.globals["compiler_source"] = compiler_source
    return env


@functools.lru_cache(maxsize=1)
def generator_digest() -> str:
    """A hash of everything that writes module code (templates, support code, the attnc
    version): two builds of attnc that write different code for one pattern differ here."""
    h = hashlib.sha256(attnc_version().encode())
    for path in sorted(TEMPLATES.glob("*.j2")) + sorted(SUPPORT.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:8]


def op_namespace(program: Program) -> str:
    """The torch.library namespace of a module's custom ops: per pattern and per code generator,
    so that modules of one pattern from two builds of attnc never replace each other's ops."""
    return f"attnc_{program.digest()}_{generator_digest()}"


def selection_params(program: Program) -> dict[str, Any]:
    """The selection's template values: its one block size (None when nothing selects) and
    each group's rule. A KV head's query heads share one selection (it pools them)."""
    sels = [g.selection for g in program.groups]
    blocks = {s.atom.block for s in sels if s is not None}
    if len(blocks) > 1:
        raise ValueError(f"{program.name}: every selection of a pattern must use one block size, got {sorted(blocks)}")
    m = program.model
    for layer in program.group_table():
        for kv in range(m.kv_heads):
            heads = layer[kv * (m.heads // m.kv_heads) : (kv + 1) * (m.heads // m.kv_heads)]
            if len({sels[g] for g in heads}) > 1 and any(sels[g] for g in heads):
                raise ValueError(
                    f"{program.name}: the query heads of KV head {kv} select differently; a selection "
                    "is chosen per KV head, so its heads must share it"
                )
    specs = [
        None if s is None else (s.atom.score, s.atom.top, s.atom.mass, s.atom.block, s.atom.stride, s.atom.last)
        for s in sels
    ]
    return {"select_block": min(blocks) if blocks else None, "select_specs": specs}


def module_params(program: Program) -> dict[str, Any]:
    """Everything module.py.j2 needs, as explicit values."""
    plans = [GroupText(p) for p in plan_program(program)]
    table = program.group_table()
    head_groups = any(len(set(row)) > 1 for row in table)
    m = program.model
    return {
        **decode_context(program),
        **selection_params(program),
        "version": attnc_version(),
        "source": str(program.source),
        "name": program.name,
        "digest": program.digest(),
        "op_namespace": op_namespace(program),
        "model": {"layers": m.layers, "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim},
        "params": dict(program.params),
        "group_texts": [str(g.pattern) for g in program.groups],
        "group_members": [sorted(g.members) for g in program.groups],
        "group_table": table,
        "head_groups": head_groups,
        "varies_by_layer": program.varies_by_layer,
        "groups": list(plans),
        "all_plans": list(plans) + [s for p in plans for s in (p.residue_plan, p.split_plan) if s is not None],
        "configs": configs.CONFIGS,
        "grid_configs": configs.GRID_CONFIGS,
        "cpu_config": configs.CPU_CONFIG,
        "bwd_configs": configs.BWD_CONFIGS,
        "bwd_cpu_config": configs.BWD_CPU_CONFIG,
        "tuning": [p.tuning for p in plans],
        "grid_tiles": [None if p.grid is None else p.grid.tiles for p in plans],
        "grid_shapes": [None if p.grid is None else (p.grid.dims, p.grid.prefix, p.grid.size) for p in plans],
    }


def render_module(program: Program) -> str:
    """The generated module's text (checked to compile as Python)."""
    text = environment().get_template("module.py.j2").render(**module_params(program))
    compile_text(text, f"<attnc module {program.name}>")
    return text


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNC_CACHE") or Path.home() / ".cache" / "attnc")


def cached_path(program: Program) -> Path:
    return cache_dir() / f"{program.name}_{program.digest()}.py"


STALE_TMP_SECONDS = 15 * 60
"""A temporary file of write_atomic this old was left by a writer that was killed."""


def write_atomic(path: Path, text: str) -> bool:
    """Write text to path through a temporary file and os.replace; False when already identical.

    The file gets the usual permissions (0666 less the umask, as `open` gives), and the
    temporary files of writers killed mid-write (older than STALE_TMP_SECONDS) are removed."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError, IsADirectoryError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True


def render_decode_module(plan: DecodePlan) -> str:
    """A standalone module with the cache manager and the decode kernel of a plan (tests,
    benchmarks); the real generated module includes the same two templates."""
    text = environment().get_template("decode_module_test.py.j2").render(**plan.context())
    compile_text(text, f"<attnc decode module {plan.program.name}>")
    return text


def write_decode_module(plan: DecodePlan, path: str | os.PathLike) -> Path:
    path = Path(path)
    write_atomic(path, render_decode_module(plan))
    return path


def load_decode_module(plan: DecodePlan, directory: str | os.PathLike, name: str | None = None):
    """Render, write and import the standalone decode module (Triton needs a real file)."""
    name = name or f"attnc_decode_{plan.program.digest()}_{plan.max_step}"
    path = write_decode_module(plan, Path(directory) / f"{name}.py")
    return import_module_from_path(path, name)


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete `.NAME.py.XXXX.tmp` files of write_atomic older than STALE_TMP_SECONDS."""
    now = time.time()
    for tmp in folder.glob(".*.py.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # another process removed or replaced it first


def write_module(program: Program, out_dir: str | os.PathLike | None = None) -> Path:
    """Render and write a program's module: `out_dir/<name>.py`, or the cache when out_dir is None."""
    text = render_module(program)
    path = Path(out_dir) / f"{program.name}.py" if out_dir is not None else cached_path(program)
    write_atomic(path, text)
    return path

"""From an IR Program to a Python module on disk: render, check, write atomically, reuse.

`render_module` fills `templates/module.py.j2` (which includes the kernel part
`prefill.py.j2`) with explicit parameters; every generated line comes from a template.
`write_module` compiles the text (a syntax check), then writes it through a temporary file
and `os.replace`, so a reader never sees a half-written module and an error leaves no
file behind. Modules are cached as `<name>_<digest>.py` under `$ATTNC_CACHE` (default
`~/.cache/attnc`); an identical file is left untouched.
"""

from __future__ import annotations

import functools
import os
import pprint
import tempfile
import time
from pathlib import Path
from typing import Any

import jinja2

from ..compiler.ir import Program
from . import configs
from .decode_plan import decode_context
from .plan import plan_program

TEMPLATES = Path(__file__).parent / "templates"


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


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = _pyrepr
    env.filters["docsafe"] = _docsafe
    return env


def op_namespace(program: Program) -> str:
    return f"attnc_{program.digest()}"


def module_params(program: Program) -> dict[str, Any]:
    """Everything module.py.j2 needs, as explicit values."""
    plans = plan_program(program)
    table = program.group_table()
    head_groups = any(len(set(row)) > 1 for row in table)
    m = program.model
    return {
        **decode_context(program),
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
        "all_plans": list(plans) + [p.residue_plan for p in plans if p.residue_plan is not None],
        "configs": configs.CONFIGS,
        "grid_configs": configs.GRID_CONFIGS,
        "cpu_config": configs.CPU_CONFIG,
        "tuning": [{"block_cap": p.block_cap, "rows_cap": p.rows_cap, "narrow": p.narrow, "grows": p.grows,
                    "residue": p.residue, "grid": p.grid is not None} for p in plans],
        "grid_tiles": [None if p.grid is None else p.grid.tiles for p in plans],
        "grid_shapes": [None if p.grid is None else (p.grid.dims, p.grid.prefix, p.grid.size) for p in plans],
    }


def render_module(program: Program) -> str:
    """The generated module's text (checked to compile as Python)."""
    text = environment().get_template("module.py.j2").render(**module_params(program))
    compile(text, f"<attnc module {program.name}>", "exec")
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

"""Syntax tree to `resolved.Spec`: names, imports, model shape, sections and the cache.

`load(path)` and `resolve_text(text, filename)` are the front end's entry points. They
parse the file, evaluate its params (command-line defines win), load the files it imports
(relative to the importing file; a cycle is an error), inline `let` names, resolve the
model shape (file, then `--model`), the grid, the head sets, the pattern's sections and the
cache block. Every semantic problem found on the way is collected and raised together as
one `AttnError`; a Spec is returned only for a file without problems.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ast, headsets
from .cache import resolve_cache
from .errors import AttnError, Reporter, command_line_loc, suggest
from .files import read_text, resolved_path
from .exprs import ExprScope, Exported
from .library import locate
from .limits import MAX_POSITION, limits_table, model_problem, pairs_problem, position_problem
from .intexpr import INT64_MAX, INT64_MIN, MODEL_FIELDS, Binding, IntScope, model_bindings
from .names import module_name_problem, name_problem
from .parser import parse
from .primitives import PRIMITIVES
from .resolved import Assignment, Grid, ModelShape, RExpr, Spec
from .sections import resolve_sections
from .select import Selection
from .shape import Shape

MAX_SOURCE_BYTES = 256 * 2**10
"""Largest `.attn` file (256 KiB): hand-written patterns are a few kilobytes, and parsing
runs at some tens of kilobytes of dense expressions a second."""


def load(
    path: str | os.PathLike[str],
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets_path: str | None = None,
) -> Spec:
    """Resolve the `.attn` file at `path` (a bare name such as `streaming_llm` may name a file
    of the shipped library, spec.library); raise `AttnError` listing every problem."""
    path = locate(path)
    reporter = Reporter()
    text = _read(Path(path), reporter, command_line_loc(), "file")
    reporter.raise_if_any()
    return resolve_text(text or "", str(path), defines, model, headsets_path)


def resolve_text(
    text: str,
    filename: str = "<string>",
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets_path: str | None = None,
) -> Spec:
    """Resolve `.attn` source text; imports and head sets are found relative to `filename`."""
    file = parse(text, filename)
    resolver = _Resolver(dict(defines or {}), dict(model or {}), headsets_path)
    resolver.reporter.add_source(filename, text)
    return resolver.main(file, filename)


# ---------------------------------------------------------------- one file's declarations


@dataclass
class _Decls:
    """A file's statements sorted by kind, with duplicates and bad names reported."""

    params: dict[str, ast.Param] = field(default_factory=dict)
    lets: dict[str, ast.Let] = field(default_factory=dict)
    patterns: list[ast.PatternDecl] = field(default_factory=list)
    models: list[ast.ModelDecl] = field(default_factory=list)
    grids: list[ast.GridDecl] = field(default_factory=list)
    headsets: list[ast.HeadSets] = field(default_factory=list)
    caches: list[ast.CacheDecl] = field(default_factory=list)
    imports: list[ast.Import] = field(default_factory=list)


def _declarations(file: ast.File, reporter: Reporter) -> _Decls:
    decls = _Decls()
    lists: dict[type, list[Any]] = {ast.PatternDecl: decls.patterns, ast.ModelDecl: decls.models, ast.GridDecl: decls.grids,
             ast.HeadSets: decls.headsets, ast.CacheDecl: decls.caches, ast.Import: decls.imports}  # fmt: skip
    for stmt in file.statements:
        if isinstance(stmt, ast.Param):
            _declare(stmt, "param", decls.params, reporter)
        elif isinstance(stmt, ast.Let):
            _declare(stmt, "let", decls.lets, reporter)
        else:
            lists[type(stmt)].append(stmt)
    for what, items in (("pattern", decls.patterns), ("model", decls.models), ("grid", decls.grids),
                        ("headsets", decls.headsets), ("cache", decls.caches)):  # fmt: skip
        for extra in items[1:]:
            reporter.error(extra.loc, f"only one {what} per file", f"the first is on line {items[0].loc.line}")
    for pattern in decls.patterns[:1]:
        if _check_name(pattern.name, "pattern", pattern.loc, reporter) and module_name_problem(pattern.name):
            reporter.error(pattern.loc, *module_name_problem(pattern.name))  # type: ignore[misc]
        if pattern.name in decls.lets:
            reporter.error(
                pattern.loc,
                f"'{pattern.name}' names both a let (line {decls.lets[pattern.name].loc.line}) and the pattern",
            )
    return decls


def _declare(stmt: ast.Param | ast.Let, what: str, table: dict, reporter: Reporter) -> None:
    """Record a param or let; a bad name is reported but still recorded, so that its uses
    do not add "not defined" errors to the one that matters."""
    if stmt.name in table:
        reporter.error(
            stmt.loc, f"{what} '{stmt.name}' is defined twice", f"the first is on line {table[stmt.name].loc.line}"
        )
        return
    if not _check_name(stmt.name, what, stmt.loc, reporter):
        pass
    elif stmt.name in PRIMITIVES:
        reporter.error(
            stmt.loc,
            f"'{stmt.name}' is a primitive and cannot be a {what}'s name",
            f"choose another name, such as my_{stmt.name}",
        )
    elif what == "param" and stmt.name in MODEL_FIELDS:
        reporter.error(
            stmt.loc,
            f"'{stmt.name}' is a model field and cannot be a param's name",
            f"set it with model {{ {stmt.name} = ... }}",
        )
        return
    table[stmt.name] = stmt


def _check_name(name: str, what: str, loc: ast.Loc, reporter: Reporter) -> bool:
    problem = name_problem(name)
    if problem:
        reporter.error(loc, f"bad {what} name '{name}': {problem[0]}", problem[1])
    return problem is None


def _read(path: Path, reporter: Reporter, loc: ast.Loc, what: str, shown: str | None = None) -> str | None:
    """A source file's text, or None after reporting why it cannot be read."""
    return read_text(path, reporter, loc, what, shown or str(path), MAX_SOURCE_BYTES)


# ---------------------------------------------------------------- files and imports


@dataclass
class _Module:
    """One resolved file: its names, ready to be used by the main file or an importer."""

    display: str
    decls: _Decls
    ints: IntScope
    exprs: ExprScope
    exported: dict[str, Exported] = field(default_factory=dict)


class _Resolver:
    """Resolves a main file and everything it imports, collecting every problem."""

    def __init__(self, defines: dict[str, int], cli_model: dict[str, int], headsets_path: str | None):
        self.reporter = Reporter()
        self.defines = defines
        self.cli_model = cli_model
        self.headsets_path = headsets_path
        self.modules: dict[Path, _Module | None] = {}
        self.stack: list[tuple[Path, str]] = []
        self.all_params: set[str] = set()
        self.imported_params: dict[str, int | None] = {}
        self.main_ints: IntScope | None = None
        self.grid: Grid | None = None
        self.root: Path = Path.cwd()
        """The folder imports may reach: the main file's, and everything below it."""

    # ------------------------------------------------------------ the main file

    def main(self, file: ast.File, filename: str) -> Spec:
        self._check_command_line()
        directory, display_dir = _where(filename)
        self.root = directory
        decls = _declarations(file, self.reporter)
        ints = self._int_scope(decls, fallback=None)
        ints.bindings.update(self._model_bindings(decls))
        self.main_ints = ints
        self.grid = self._grid(decls, ints)
        self.stack.append((Path(os.path.realpath(filename)) if filename != "<string>" else Path("<string>"), filename))
        module = self._module(decls, filename, ints, directory, display_dir)
        shape, shape_ok = self._shape(decls, ints)
        selection = self._selection(decls, shape, ints, directory, display_dir)
        assignments = self._pattern(decls, module, selection, shape_ok)
        cache = self._cache(decls, selection, shape_ok)
        self._check_defines_used()
        params = {**self.imported_params, **{name: ints.value(name, p.loc) for name, p in decls.params.items()}}
        self.reporter.raise_if_any()
        return Spec(
            source=filename,
            name=decls.patterns[0].name,
            params=params,  # type: ignore[arg-type]
            model=_model_shape(ints, decls, self.cli_model),
            grid=self.grid,
            assignments=tuple(assignments),
            cache=tuple(cache),
            head_sets=selection.head_sets or {},
        )

    def _module(self, decls: _Decls, display: str, ints: IntScope, directory: Path, display_dir: str) -> _Module:
        """Names of one file: imports loaded, every param and let evaluated once."""
        grid_dims = self.grid.dims if self.grid else None
        module = _Module(display, decls, ints, ExprScope(ints, self.reporter, grid_dims, lets=dict(decls.lets)))
        for imp in decls.imports:
            imported = self._import(imp, directory, display_dir)
            if imported is not None:
                self._bring_in(module, imported, imp)
        for name, let in decls.lets.items():
            if name in module.exprs.imported:
                self.reporter.error(
                    let.loc, f"let '{name}' hides the '{name}' imported from {module.exprs.imported[name].origin}"
                )
        for name, param in decls.params.items():
            ints.value(name, param.loc)
        for name, let in decls.lets.items():
            module.exprs.name(name, let.loc)
        module.exported = _exports(module, self.reporter)
        return module

    def _import(self, imp: ast.Import, directory: Path, display_dir: str) -> _Module | None:
        if not imp.path.endswith(".attn"):
            self.reporter.error(imp.loc, f'cannot import "{imp.path}": imports name .attn files')
            return None
        display = os.path.normpath(os.path.join(display_dir, imp.path))
        target = resolved_path(directory / imp.path, self.reporter, imp.loc, display)
        if target is None:
            return None
        if not target.is_relative_to(self.root):
            self.reporter.error(
                imp.loc,
                f'cannot import "{imp.path}": it is outside {self.root}, the folder of the main file',
                "imports reach only the main file's folder and the folders below it; copy the file there",
            )
            return None
        if any(target == path for path, _ in self.stack):
            cycle = " -> ".join([shown for _, shown in self.stack] + [display])
            self.reporter.error(imp.loc, f"import cycle: {cycle}", "move the shared lets to a file that both import")
            return None
        if target not in self.modules:
            self.modules[target] = self._load_import(imp, target, display)
        return self.modules[target]

    def _load_import(self, imp: ast.Import, target: Path, display: str) -> _Module | None:
        text = _read(target, self.reporter, imp.loc, "imported file", display)
        if text is None:
            return None
        self.reporter.add_source(display, text)
        try:
            file = parse(text, display)
        except AttnError as exc:
            self.reporter.extend(exc.diagnostics)
            return None
        decls = _declarations(file, self.reporter)
        ints = self._int_scope(decls, fallback=self._main_value)
        self.stack.append((target, display))
        try:
            directory, display_dir = target.parent, os.path.dirname(display)
            module = self._module(decls, display, ints, directory, display_dir)
        finally:
            self.stack.pop()
        for name, param in decls.params.items():
            self.imported_params.setdefault(name, ints.value(name, param.loc))
        return module

    def _main_value(self, name: str, loc: ast.Loc) -> int | None:
        """Model fields used in an imported file are the main file's."""
        return self.main_ints.value(name, loc) if self.main_ints else None

    def _bring_in(self, module: _Module, imported: _Module, imp: ast.Import) -> None:
        for name, exported in imported.exported.items():
            if name in module.exprs.imported and module.exprs.imported[name].origin != exported.origin:
                self.reporter.error(
                    imp.loc,
                    f"this import brings in '{name}', already imported from {module.exprs.imported[name].origin}",
                )
                continue
            module.exprs.imported[name] = exported

    # ------------------------------------------------------------ params, defines, model

    def _int_scope(self, decls: _Decls, fallback) -> IntScope:  # type: ignore[no-untyped-def]
        ints = IntScope(self.reporter, fallback=fallback)
        for name, param in decls.params.items():
            self.all_params.add(name)
            if name in self.defines:
                ints.bind(name, Binding(command_line_loc(), value=self.defines[name]))
            else:
                ints.bind(name, Binding(param.loc, expr=param.value))
        return ints

    def _model_bindings(self, decls: _Decls) -> dict[str, Binding]:
        fields = {
            name: (expr.loc, expr) for decl in decls.models[:1] for name, expr in decl.fields if name in MODEL_FIELDS
        }
        valid_cli = {
            k: v for k, v in self.cli_model.items() if k in MODEL_FIELDS and 1 <= v <= INT64_MAX
        }  # others reported
        return model_bindings(fields, valid_cli, command_line_loc())

    def _check_command_line(self) -> None:
        loc = command_line_loc()
        for name, value in self.cli_model.items():
            if name not in MODEL_FIELDS:
                self.reporter.error(
                    loc,
                    f"unknown model field '{name}' (--model, or model= in Python)",
                    suggest(name, MODEL_FIELDS) or f"the fields are {', '.join(MODEL_FIELDS)}",
                )
            elif not 1 <= value <= INT64_MAX:
                self.reporter.error(
                    loc, f"the model's {name} must be at least 1, got {name}={value} (--model, or model= in Python)"
                )
        for name, value in self.defines.items():
            if not INT64_MIN <= value <= INT64_MAX:
                self.reporter.error(loc, f"-D {name}={value} does not fit in 64 bits")

    def _check_defines_used(self) -> None:
        for name in self.defines:
            if name not in self.all_params:
                hint = suggest(name, self.all_params) or (
                    f"the params are {', '.join(sorted(self.all_params))}"
                    if self.all_params
                    else "this file has no params"
                )
                self.reporter.error(
                    command_line_loc(), f"-D {name}: no param '{name}' in this file or its imports", hint
                )

    def _shape(self, decls: _Decls, ints: IntScope) -> tuple[Shape, bool]:
        """The model's layers, heads and KV heads; False when any of them is wrong."""
        before = len(self.reporter.diagnostics)
        values: dict[str, int | None] = {}
        reported: set[int] = set()  # values found too large (kv_heads defaults to heads: say it once)
        for name in ("layers", "heads", "kv_heads", "head_dim"):
            binding = ints.bindings.get(name)
            if binding is None:
                values[name] = None
                continue
            value = ints.value(name, binding.loc)
            if value is not None and value < 1:
                self.reporter.error(binding.loc, f"the model's {name} must be at least 1, got {name}={value}")
                value = None
            elif value is not None and model_problem(name, value):
                if value not in reported:
                    self.reporter.error(
                        binding.loc, str(model_problem(name, value)), f"the limits are {limits_table()}"
                    )
                reported.add(value)
                value = None
            values[name] = value
        heads, kv_heads, layers = values["heads"], values["kv_heads"], values["layers"]
        if heads and layers and pairs_problem(layers, heads):
            where = ints.bindings["heads"].loc
            self.reporter.error(where, str(pairs_problem(layers, heads)), f"the limits are {limits_table()}")
        if heads and kv_heads and heads % kv_heads:
            where = ints.bindings["kv_heads"].loc
            self.reporter.error(
                where,
                f"kv_heads ({kv_heads}) must divide heads ({heads})",
                "each KV head serves an equal group of query heads",
            )
        ok = len(self.reporter.diagnostics) == before
        return Shape(values["layers"], heads, kv_heads if ok else None), ok

    def _grid(self, decls: _Decls, ints: IntScope) -> Grid | None:
        if not decls.grids:
            return None
        decl = decls.grids[0]
        if not 1 <= len(decl.dims) <= 3:
            self.reporter.error(
                decl.loc,
                f"a grid has 1 to 3 dimensions, got {len(decl.dims)}",
                "as in grid(16, 48, 80) for frames x height x width",
            )
            return None
        dims = [ints.eval(d) for d in decl.dims]
        prefix = ints.eval(decl.prefix) if decl.prefix is not None else 0
        ok = True
        for expr, value in zip(decl.dims, dims, strict=True):
            if value is not None and value < 1:
                self.reporter.error(expr.loc, f"a grid dimension must be at least 1, got {value}")
                ok = False
        if prefix is not None and prefix < 0:
            self.reporter.error(decl.prefix.loc, f"the prefix must be at least 0, got {prefix}")  # type: ignore[union-attr]
            ok = False
        if not ok or prefix is None or any(d is None for d in dims):
            return None
        tokens = prefix + math.prod(dims)  # type: ignore[arg-type]
        if tokens > MAX_POSITION:
            self.reporter.error(
                decl.loc,
                str(position_problem(tokens, "the grid's token count (prefix + product of the dimensions)")),
                "a grid holds at most 2**30 tokens",
            )
            return None
        return Grid(dims=tuple(dims), prefix=prefix)  # type: ignore[arg-type]

    # ------------------------------------------------------------ head sets, pattern, cache

    def _selection(self, decls: _Decls, shape: Shape, ints: IntScope, directory: Path, display_dir: str) -> Selection:
        selection = Selection(shape, None, ints, self.reporter)
        if self.headsets_path is not None:
            path, display, loc = Path(self.headsets_path), self.headsets_path, command_line_loc()
        elif decls.headsets:
            decl = decls.headsets[0]
            path, display, loc = directory / decl.path, os.path.normpath(os.path.join(display_dir, decl.path)), decl.loc
        else:
            return selection
        before = len(self.reporter.diagnostics)
        raw = headsets.load(path, display, self.reporter, loc)
        selection.head_sets = headsets.expand(raw or {}, shape, self.reporter)
        selection.head_sets_failed = len(self.reporter.diagnostics) > before
        return selection

    def _pattern(self, decls: _Decls, module: _Module, selection: Selection, shape_ok: bool) -> list[Assignment]:
        if not decls.patterns:
            if not decls.caches:  # else the cache's own error says it
                self.reporter.error(
                    ast.Loc(file=module.display, line=1, col=1),
                    "this file has no pattern",
                    "add one, as in pattern dense = causal",
                )
            return []
        decl = decls.patterns[0]
        if isinstance(decl.body, list):
            return resolve_sections(decl, decl.body, selection, module.exprs) if shape_ok else []
        expr = module.exprs.resolve(decl.body)
        return [] if expr is None else [Assignment(expr=expr, loc=decl.loc)]

    def _cache(self, decls: _Decls, selection: Selection, shape_ok: bool) -> list:
        if not decls.caches:
            return []
        if not decls.patterns:
            self.reporter.error(decls.caches[0].loc, "a cache block needs a pattern in the same file")
            return []
        return resolve_cache(decls.caches[0], selection) if shape_ok else []


def _exports(module: _Module, reporter: Reporter) -> dict[str, Exported]:
    """What importing this file brings in: its lets, and its pattern when it is an expression."""
    exported = {name: Exported(module.display, _let_getter(module, name)) for name in module.decls.lets}
    for decl in module.decls.patterns[:1]:
        exported[decl.name] = Exported(module.display, _pattern_getter(module, decl, reporter))
    return exported


def _let_getter(module: _Module, name: str):  # type: ignore[no-untyped-def]
    return lambda loc: module.exprs.name(name, loc)


def _pattern_getter(module: _Module, decl: ast.PatternDecl, reporter: Reporter):  # type: ignore[no-untyped-def]
    cache: dict[str, RExpr | None] = {}

    def value(loc: ast.Loc) -> RExpr | None:
        if isinstance(decl.body, list):
            reporter.error(
                loc, f"pattern '{decl.name}' of {module.display} has sections and cannot be used in an expression"
            )
            return None
        if "value" not in cache:
            cache["value"] = module.exprs.resolve(decl.body)
        return cache["value"]

    return value


def _where(filename: str) -> tuple[Path, str]:
    """The directory imports are relative to, on disk and as shown in messages."""
    if filename.startswith("<"):
        return Path.cwd(), ""
    return Path(os.path.realpath(filename)).parent, os.path.dirname(filename)


def _model_shape(ints: IntScope, decls: _Decls, cli: Mapping[str, int]) -> ModelShape:
    """The model fields the file or the command line gave (kv_heads stays None if neither did)."""
    given = {name for decl in decls.models[:1] for name, _ in decl.fields} | set(cli)
    values = {
        name: ints.value(name, ints.bindings[name].loc)
        for name in MODEL_FIELDS
        if name in given and name in ints.bindings
    }
    return ModelShape(**values)  # type: ignore[arg-type]

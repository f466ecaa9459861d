"""Patches of Triton's interpreter that change how fast it runs, never what it computes;
tests/conftest.py applies them in every process of the suite, and processes that the tests
spawn (tests/test_distributed.py's ranks) apply them too."""

from __future__ import annotations


def speed_up_the_interpreter() -> None:
    """The patches below (each a no-op on a Triton without the internals it expects)."""
    _patch_the_language_once_per_launch()
    _skip_overflow_conditions_nobody_checks()
    _numpy_types_once_per_type()
    _tuple_type_names_when_read()
    _tuple_types_when_read()


def _patch_the_language_once_per_launch() -> None:
    """Triton's interpreter patches the language modules a @triton.jit function sees (a scan of
    all their members) at every call of a helper inside a kernel, tl.sum and tl.zeros among
    them, and never undoes those patches (only the launch's own, when it ends): the kernels
    here call helpers in their inner loops. This patches each module once per launch and
    skips the repeats, which would find every builtin patched already; what the kernels
    compute is unchanged. A Triton without these internals is left alone."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    patch, empty = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "_LangPatchScope", None)
    if patch is None or empty is None or getattr(patch, "once_per_launch", False):
        return
    launches: list[frozenset] = []  # the language modules patched within each running launch
    known: dict = {}  # function -> (the size of its globals, the language modules among them)

    def modules_of(fn) -> frozenset:
        names = fn.__globals__
        if fn not in known or known[fn][0] != len(names):  # globals only grow (Triton adds its own)
            seen = frozenset(id(v) for v in names.values() if isinstance(v, type(tl)) and v in (tl, tl.core))
            known[fn] = len(names), seen
        return known[fn][1]

    def patch_lang(fn):
        seen = modules_of(fn)
        if launches and seen and seen <= launches[-1]:
            return empty()  # a helper of the running launch: its modules are patched already
        scope = patch(fn)
        if launches:  # a helper that sees another module: patched as Triton does, for good
            launches[-1] |= seen
            return scope
        restore = scope.restore

        def restore_and_end():
            launches.pop()
            restore()

        scope.restore = restore_and_end
        launches.append(seen)
        return scope

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang


def _skip_overflow_conditions_nobody_checks() -> None:
    """With `sanitize_overflow` on (the interpreter's default), every 32-bit integer +, - and *
    of a kernel is computed again in 64 bits and compared with the type's range, and the
    condition goes to tl.device_assert, which drops it unless the options' `debug` is on: the
    interpreter's never is. That dead work is about a third of the interpreter's time on the
    kernels here; with `debug` off it is switched off, which leaves every result and every
    check as they were. A Triton without these internals, or with `debug` on, is left alone."""
    import dataclasses

    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(options) or getattr(options, "debug", True):
        return
    if getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def _numpy_types_once_per_type() -> None:
    """The interpreter maps a Triton type to the numpy type that holds its values at every
    operation of a kernel, building a table of nineteen numpy types each time: about a twentieth
    of its time here. This keeps each answer, by the type's class and name (a block type's
    name holds its shape and element type); the answers are the same."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    get = getattr(interpreter, "_get_np_dtype", None)
    if get is None or getattr(get, "once_per_type", False):
        return
    known: dict = {}

    def get_np_dtype(tt_dtype):
        key = (type(tt_dtype), getattr(tt_dtype, "name", None))
        if key[1] is None:
            return get(tt_dtype)
        if key not in known:
            known[key] = get(tt_dtype)
        return known[key]

    get_np_dtype.once_per_type = True
    interpreter._get_np_dtype = get_np_dtype


def _tuple_type_names_when_read() -> None:
    """Every tensor the interpreter makes holds its shape as a tl.tuple, whose tuple_type
    formats a name from all its members' types when it is made: about a fifteenth of the
    interpreter's time here, for a name that is hardly ever read. This formats the same name
    when it is read. A Triton whose tuple_type differs is left alone."""
    try:
        import triton.language as tl
    except ImportError:
        return
    kind = getattr(tl, "tuple_type", None)
    if kind is None or "name" in vars(kind) or not hasattr(kind(["x"]), "fields"):
        return

    def init(self, types, fields=None):
        self.types = types
        self.fields = fields or [""] * len(types)

    def name(self) -> str:
        return "[" + ",".join([f"{k}:{v}" for k, v in zip(self.fields, self.types)]) + "]"

    kind.__init__, kind.name = init, property(name)


class _TypeWhenRead:
    """tl.tuple's `type`: the one given when it was made, else its values' tuple type, made
    when first read (then kept, as Triton keeps the one it makes at once)."""

    def __get__(self, value, owner=None):
        if value is None:
            return self
        kept = value.__dict__
        if "_type_when_read" not in kept:
            import triton.language as tl

            kept["_type_when_read"] = tl.core._type_for_tuple_values(kept["values"])
        return kept["_type_when_read"]

    def __set__(self, value, kind) -> None:
        value.__dict__["_type_when_read"] = kind


def _tuple_types_when_read() -> None:
    """Every tensor the interpreter makes holds its shape as a tl.tuple, which makes the tuple
    type of its values at once; it is hardly ever read. This makes it when it is read, from
    the same values: about a twentieth of the interpreter's time here."""
    try:
        import triton.language as tl
    except ImportError:
        return
    kind, make = getattr(tl, "tuple", None), getattr(tl.core, "_type_for_tuple_values", None)
    if kind is None or make is None or isinstance(vars(kind).get("type"), _TypeWhenRead):
        return
    if "type" in vars(kind) or not hasattr(kind([1]), "values"):
        return

    def init(self, args, type=None):
        self.values = [i for i in args]
        if isinstance(type, tl.tuple_type):
            self.type = type
        elif type is not None:  # as Triton's: a list of types
            self.type = tl.tuple_type(type)

    kind.__init__, kind.type = init, _TypeWhenRead()

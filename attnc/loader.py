"""`attnc.load` and `attnc.compile_file`: the loader lives in codegen/loader.py (the runtime
uses it too); this module keeps its public names where users import them from."""

from .codegen.loader import compile_file, import_file, import_text, load, load_program, program_of  # noqa: F401

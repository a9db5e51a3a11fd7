"""The `memplan` command's first module: it runs before the memplan package is imported.

`dataclasses` imports `inspect` (with `ast`, `dis` and `tokenize`: about 6 ms of a 37 ms
`memplan estimate` in a fresh process) and reads it only to write a docstring for a record that
has none; memplan's records all have one. So the command registers `inspect` as a module whose
code runs when one of its names is first read (click's error path, a traceback, a user's
plugin: they get the whole module), then runs the command (memplan.cli.fast). Importing
memplan as a library changes nothing: this module is the console script's alone.
"""
from __future__ import annotations

import sys
import types
from importlib.util import find_spec, module_from_spec


class _Deferred(types.ModuleType):
    """A module not run yet: reading a name it lacks runs its code, in place, first."""

    def __getattr__(self, name):
        self.__class__ = types.ModuleType
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def defer(name: str) -> None:
    """Register module `name` to run on first use (nothing when it is already imported)."""
    if name in sys.modules:
        return
    spec = find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module


def main():
    defer("inspect")
    from memplan.cli.fast import main as run

    return run()

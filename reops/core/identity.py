"""What a value IS, as a short digest that is equal across re-imports of the same code.

Why: a hot reload imports a flow file again, which makes new function objects, new lambdas
and new module globals even when nothing changed. To keep the live parts of a flow whose
definition did not change (an operator's windows, a trigger's schedule), the runner
compares what each stage was built from. `identity(x)` is that comparison key:

- data (None, bool, numbers, str, bytes, paths, enums, tuples/lists/sets/dicts, msgspec
  structs, Hosts) by value;
- a function by its code — bytecode, constants (nested code too), names, flags and
  argument counts; not its line numbers, so moving it in the file changes nothing — and
  by what it closes over, its defaults, and the module globals its code reads (plain
  data by value; functions of the same module by their own identity; anything imported
  by module and name). A lambda edited to another body is another identity; the same
  lambda re-imported is the same one;
- `functools.partial`, bound methods, classes and modules by their parts / names;
- an object with `__reops_identity__()` by what that returns;
- anything else by its `repr` when that carries no memory address, else by the object
  itself (never equal to a re-built one: unknown means "changed", the safe answer).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import types
from pathlib import PurePath
from typing import Any

import msgspec

from reops.core.model import Hosts

__all__ = ["fingerprint", "identity"]

#: how deep nested values are followed (deeper parts count as their type only)
MAX_DEPTH = 24


def identity(value: Any) -> str:
    """A 16-hex digest of `fingerprint(value)`: equal for equal definitions."""
    return hashlib.sha256(repr(fingerprint(value)).encode()).hexdigest()[:16]


def fingerprint(value: Any) -> Any:
    """A nested tuple of plain values describing `value` (see the module docstring)."""
    return _Walk().of(value, 0)


class _Walk:
    def __init__(self) -> None:
        self.active: set[int] = set()  # functions being walked: a cycle is named, not followed

    def of(self, v: Any, depth: int) -> Any:
        try:
            return self.value(v, depth)
        except RecursionError:
            raise
        except Exception:  # a value that cannot say what it is: unknown, so "changed"
            return ("object", _qual(type(v)), id(v))

    def value(self, v: Any, depth: int) -> Any:
        if v is None or isinstance(v, bool | int | float | str | bytes | complex):
            return (type(v).__name__, v)
        if depth > MAX_DEPTH:
            return ("deep", _qual(type(v)))
        d = depth + 1
        if isinstance(v, enum.Enum):
            return ("enum", _qual(type(v)), v.name)
        if isinstance(v, PurePath):
            return ("path", str(v))
        if isinstance(v, tuple | list):
            return (type(v).__name__, tuple(self.of(x, d) for x in v))
        if isinstance(v, set | frozenset):
            return ("set", tuple(sorted((self.of(x, d) for x in v), key=repr)))
        if isinstance(v, dict):
            return ("dict", tuple(sorted(((self.of(k, d), self.of(x, d))
                                          for k, x in v.items()), key=repr)))
        if isinstance(v, types.CodeType):
            return self.code(v, d)
        if isinstance(v, types.FunctionType):
            return self.function(v, d)
        if isinstance(v, functools.partial):
            return ("partial", self.of(v.func, d), self.of(v.args, d), self.of(v.keywords, d))
        if isinstance(v, types.MethodType):
            return ("method", self.of(v.__self__, d), self.of(v.__func__, d))
        if isinstance(v, type | types.BuiltinFunctionType | types.ModuleType):
            return ("name", _qual(v))
        own = getattr(type(v), "__reops_identity__", None)
        if callable(own):
            return ("own", _qual(type(v)), self.of(own(v), d))
        if isinstance(v, Hosts):
            return ("hosts", tuple(self.of(h, d) for h in v))
        if isinstance(v, msgspec.Struct):
            return ("struct", _qual(type(v)),
                    tuple(self.of(getattr(v, f, None), d) for f in v.__struct_fields__))
        text = repr(v)
        if "0x" in text:
            return ("object", _qual(type(v)), id(v))
        return ("repr", _qual(type(v)), text)

    def code(self, c: types.CodeType, d: int) -> Any:
        return ("code", c.co_code, tuple(self.of(x, d) for x in c.co_consts), c.co_names,
                c.co_argcount, c.co_kwonlyargcount, c.co_posonlyargcount, c.co_flags)

    def function(self, f: types.FunctionType, d: int) -> Any:
        if id(f) in self.active:
            return ("cycle", f.__qualname__)
        self.active.add(id(f))
        try:
            cells = []
            for cell in f.__closure__ or ():
                try:
                    cells.append(self.of(cell.cell_contents, d))
                except ValueError:  # an empty cell (a name assigned later)
                    cells.append(("empty",))
            return ("function", self.code(f.__code__, d), tuple(cells),
                    self.of(f.__defaults__, d), self.of(f.__kwdefaults__, d),
                    self.globals_of(f, d))
        finally:
            self.active.discard(id(f))

    def globals_of(self, f: types.FunctionType, d: int) -> Any:
        """The module globals `f`'s code reads: data by value, same-module functions
        walked, anything imported named (it is the same object in the next version)."""
        g = f.__globals__
        out = []
        for name in sorted(_names(f.__code__)):
            if name not in g:
                continue
            v = g[name]
            if isinstance(v, types.FunctionType) and v.__globals__ is not g:
                out.append((name, ("name", _qual(v))))
            else:
                out.append((name, self.of(v, d)))
        return tuple(out)


def _names(c: types.CodeType) -> set[str]:
    """Every global-or-attribute name the code (and code nested in it) mentions."""
    names = set(c.co_names)
    for k in c.co_consts:
        if isinstance(k, types.CodeType):
            names |= _names(k)
    return names


def _qual(v: Any) -> str:
    if isinstance(v, types.ModuleType):
        return v.__name__
    module = getattr(v, "__module__", None) or ""
    return f"{module}.{getattr(v, '__qualname__', getattr(v, '__name__', type(v).__name__))}"


"""Shipped Python code: module source sent by the hub, compiled once and cached by hash.

Off unless the agent runs with --allow-code: a hub that can ship code can do anything the
agent's user can, so the host's owner must opt in.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from reops_agent.protocol import CodeRef, code_hash

#: modules kept compiled; the least recently used is dropped beyond this
CACHE_SIZE = 128


class CodeMissing(LookupError):
    """The call referenced code by hash only and this agent does not have it."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


class CodeCache:
    """Compiled shipped modules by source hash (bounded LRU)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._modules: OrderedDict[str, types.ModuleType] = OrderedDict()
        self._size = size

    def __contains__(self, digest: object) -> bool:
        return digest in self._modules

    def function(self, ref: CodeRef) -> Callable[..., Any]:
        """The function `ref` names, compiling its module first if needed."""
        module = self._modules.get(ref.hash)
        if module is None:
            if ref.source is None:
                raise CodeMissing(ref.hash)
            if code_hash(ref.source) != ref.hash:
                raise ValueError(f"shipped code does not match its hash {ref.hash[:12]}")
            module = types.ModuleType(ref.module)
            module.__file__ = f"<shipped {ref.module} {ref.hash[:12]}>"
            exec(compile(ref.source, module.__file__, "exec"), module.__dict__)
            self._modules[ref.hash] = module
            while len(self._modules) > self._size:
                self._modules.popitem(last=False)
        self._modules.move_to_end(ref.hash)
        target: Any = module
        for part in ref.function.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{ref.module}.{ref.function} is not callable")
        return target

"""What an agent function gives back before it becomes a Done message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reops_agent.protocol import CallStatus


@dataclass(frozen=True, slots=True)
class FnResult:
    """A function's outcome: status and exit code as a shell command would have them."""

    status: CallStatus = "ok"
    code: int = 0
    out: str = ""
    err: str = ""
    data: Any = None


def value(data: Any, out: str = "") -> FnResult:
    """A successful result carrying `data` (and optional text)."""
    return FnResult(status="ok", code=0, out=out, data=data)

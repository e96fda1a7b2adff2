"""`flows` in the REPL: the flows running in `reops hub`, through its control socket.

The same requests as `reops flows start|ls|reload|stop|log`, so what the session starts
runs in the controller and keeps running after the REPL exits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reops.control.client import request_sync
from reops.control.settings import load_hub_settings

#: how long a plain request (ls, stop, log) may wait for the hub's answer
REQUEST_TIMEOUT_S = 10.0


def flow_args(params: Mapping[str, Any]) -> list[str]:
    """Keyword parameters as the flow's options, as `reops flows start` passes them:
    `selector="web*"` → `--selector web*`, `dry=True` → `--dry`, `dry=False` → `--no-dry`,
    a list → the option repeated."""
    args: list[str] = []
    for name, value in params.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else f"--no-{option[2:]}")
        elif isinstance(value, (list, tuple)):
            for v in value:
                args += [option, str(v)]
        elif value is not None:
            args += [option, str(value)]
    return args


class Flows:
    """Flows in the hub: `flows.start("flows/heal.py", selector="group:web")`, `flows.ls()`,
    `flows.reload(name)`, `flows.stop(name)`, `flows.log(name)`."""

    def __init__(self, control: Path | None = None) -> None:
        self._control = control

    @property
    def control(self) -> Path:
        return self._control or load_hub_settings().control_path

    def _ask(self, method: str, params: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S,
             on_item: Any = None) -> Any:
        return request_sync(self.control, method, params, timeout=timeout, on_item=on_item)

    def start(self, spec: str, *, name: str = "", watch: bool = False, max_rate: str = "",
              **params: Any) -> dict[str, Any]:
        """Run FILE[:FUNC] in the hub with `params` as its options; returns once it runs."""
        from reops.hub.flows import load_flow_settings

        file, sep, func = spec.rpartition(":")
        if not sep or not re.fullmatch(r"[\w.-]+", func) or Path(spec).is_file():
            file, func = spec, ""  # FILE[:FUNC], as `reops run` reads it
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{file}: no such flow file")
        info: dict[str, Any] = self._ask(
            "flows.start", {"file": str(path), "func": func, "args": flow_args(params),
                            "watch": watch, "name": name, "max_rate": max_rate},
            timeout=load_flow_settings().start_timeout_s + 10)
        return info

    def ls(self) -> list[dict[str, Any]]:
        """The flows in the hub: name, state, since, fired, last outcome, version, file."""
        rows: list[dict[str, Any]] = self._ask("flows.ls", {})
        return rows

    def names(self) -> list[str]:
        """The names of the flows in the hub (for completion)."""
        return [str(r["name"]) for r in self.ls()]

    def reload(self, name: str) -> dict[str, Any]:
        """Import the flow's file again and swap it in; a broken file keeps the old one."""
        from reops.hub.flows import load_flow_settings

        info: dict[str, Any] = self._ask("flows.reload", {"name": name},
                                         timeout=load_flow_settings().start_timeout_s + 10)
        return info

    def stop(self, name: str) -> None:
        """Stop a flow (its steps in flight are cancelled); it does not come back."""
        self._ask("flows.stop", {"name": name})

    def log(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` audit records of a flow: when, version, firing, host, status."""
        rows: list[dict[str, Any]] = []
        self._ask("flows.log", {"name": name, "follow": False, "limit": limit},
                  on_item=rows.append)
        return rows

    def __repr__(self) -> str:
        return f"<flows in the hub at {self.control}: .start .ls .reload .stop .log>"

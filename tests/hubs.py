"""Real `reops hub` processes for the tests: one home each, its ports on loopback, the CLI
and control requests pointed at it, `reops tail` read in the background; `until` polls a
condition with a deadline (no sleep-and-hope). Used by the flows' and the cluster's tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from reops.lab.agents import LabHub

T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Poll `check` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class HubProc:
    """A `reops hub` with its own home (0700) and loopback ports; `env_vars` go to the hub
    and to the CLI run against it (add to them before `start`)."""

    def __init__(self, home: Path, **env: str) -> None:
        home.mkdir(mode=0o700, exist_ok=True)  # private, as reops' home must be
        self.home = home
        self.env_vars = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "", **env}
        self.lab_hub = LabHub(home=home, bind="tcp://127.0.0.1:*", env=self.env_vars)

    def start(self) -> Self:
        self.lab_hub.bind = "tcp://127.0.0.1:*"
        self.lab_hub.start()
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.lab_hub.proc is not None
        return self.lab_hub.proc

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.env_vars, "REOPS_HOME": str(self.home)}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "reops.cli.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def request(self, method: str, **params: Any) -> Any:
        """A control request straight to the hub (no CLI process: quick to poll)."""
        from reops.control.client import request_sync

        return request_sync(self.lab_hub.control_path, method, params, timeout=30)

    def tail(self, lines: list[dict[str, Any]], *args: str) -> subprocess.Popen[str]:
        """`reops tail ARGS -o json` on this hub; each message parsed into `lines` as it
        comes (terminate the process when done)."""
        proc = subprocess.Popen([sys.executable, "-m", "reops.cli.main", "tail", *args,
                                 "-o", "json"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
        return proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.lab_hub.stop(sig, timeout=40)

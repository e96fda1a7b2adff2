"""The user-facing operations: Op descriptions from `reops.ops`, made Hosts-first.

`exec_(hosts, "uname -a")` returns a Stream; `then(exec_, "uname -r")` chains it.
"""

from __future__ import annotations

from reops.ops import facts as _facts
from reops.ops import files, shell
from reops.streams.source import step

exec_ = step(shell.exec_)
sh = exec_
ls = step(shell.ls)
upload = step(files.upload)
download = step(files.download)
facts = step(_facts.facts)

__all__ = ["download", "exec_", "facts", "ls", "sh", "upload"]

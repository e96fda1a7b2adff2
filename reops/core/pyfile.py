"""Import a user's Python file by path: saved flows, provisioning recipes.

The file runs as a module with a unique name (never `__main__`); its directory joins
sys.path, as with `python FILE`, so it can import helper modules beside it. A failure is
one line naming the file's line where it happened.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import traceback
import types
from pathlib import Path


class PyFileError(ValueError):
    """A Python file that cannot be imported: one line, `file:line: what`."""


def module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    return f"reops_flow_{stem}_{digest}"


def import_error(path: Path, e: BaseException,
                 error: type[ValueError] = PyFileError) -> ValueError:
    """One line naming the file's line where importing it failed."""
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == path:
        return error(f"{path}:{e.lineno}: syntax error: {e.msg}")
    line = next(
        (
            fs.lineno
            for fs in reversed(traceback.extract_tb(e.__traceback__))
            if Path(fs.filename).resolve() == path
        ),
        None,
    )
    where = f"{path}:{line}" if line else str(path)
    return error(f"{where}: {type(e).__name__}: {e}")


def import_file(path: str | Path, error: type[ValueError] = PyFileError,
                what: str = "Python file") -> types.ModuleType:
    """Import the Python file at `path`; `error` (a ValueError) with file:line when it fails."""
    path = Path(path).resolve()
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    name = module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise error(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and get_type_hints look here
    folder = str(path.parent)
    if folder not in sys.path:  # sibling helper modules import as with `python FILE`
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a stray exit() must not end `reops flows`
        del sys.modules[name]
        raise import_error(path, e, error) from None
    return module

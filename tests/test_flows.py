"""Saved flows: loading files, typed options, exit codes, broken files, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from reops.flows import Flow, FlowError, find_flows, flow, flows_table, load_flows, resolve

ROOT = Path(__file__).resolve().parent.parent

TYPED = '''
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from reops.flows import flow


@flow
def typed(
    selector: str = "all",
    count: int = 3,
    ratio: float = 0.5,
    save: Path | None = None,
    every: float | None = None,
    mode: Literal["fast", "safe"] = "safe",
    level: Literal[1, 2] = 1,
    verbose: bool = False,
    color: bool = True,
    tag: list[str] | None = None,
    port: list[int] = [22],
    dry_run: Annotated[bool, "only show what would run"] = False,
) -> None:
    """Show the parsed options.

    Prints them as JSON so the test can check the types.

    Args:
        selector: which hosts,
            as a selector
        count: how many
    """
    print(json.dumps({
        "selector": selector, "count": count, "ratio": ratio,
        "save": None if save is None else [type(save).__name__, str(save)],
        "every": every, "mode": mode, "level": level, "verbose": verbose, "color": color,
        "tag": tag, "port": port, "dry_run": dry_run,
    }))


@flow(name="needs", help="Needs a target.")
def needs_target(target: str, times: int) -> int:
    """Not this docstring."""
    print(target * times)
    return 0
'''


def write(tmp_path: Path, text: str, name: str = "flows.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def invoke(f: Flow, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(f.command(), list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def typed(tmp_path: Path) -> list[Flow]:
    return load_flows(write(tmp_path, TYPED))


def test_load_flows_in_source_order(typed: list[Flow], tmp_path: Path) -> None:
    assert [f.name for f in typed] == ["typed", "needs"]
    assert typed[0].file == tmp_path / "flows.py"
    assert typed[0].line == 11  # the decorator's line, as Python reports it
    assert typed[1].func.__name__ == "needs_target"


def test_defaults(typed: list[Flow]) -> None:
    import json

    code, out = invoke(typed[0])
    assert code == 0
    assert json.loads(out) == {
        "selector": "all", "count": 3, "ratio": 0.5, "save": None, "every": None,
        "mode": "safe", "level": 1, "verbose": False, "color": True, "tag": None,
        "port": [22], "dry_run": False,
    }  # fmt: skip


def test_options_are_converted_to_the_annotated_types(typed: list[Flow]) -> None:
    import json

    code, out = invoke(
        typed[0],
        *("--selector", "group:web & !web3", "--count", "7", "--ratio", "2"),
        *("--save", "out/report.parquet", "--every", "1.5", "--mode", "fast", "--level", "2"),
        *("--verbose", "--no-color", "--tag", "a", "--tag", "b"),
        *("--port", "22", "--port", "2222", "--dry-run"),
    )
    assert code == 0, out
    assert json.loads(out) == {
        "selector": "group:web & !web3", "count": 7, "ratio": 2.0,
        "save": ["PosixPath", "out/report.parquet"], "every": 1.5, "mode": "fast",
        "level": 2, "verbose": True, "color": False, "tag": ["a", "b"],
        "port": [22, 2222], "dry_run": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "x"], "'x' is not a valid integer"),
        (["--mode", "slow"], "'slow' is not one of 'fast', 'safe'"),
        (["--level", "3"], "'3' is not one of '1', '2'"),
        (["--bogus"], "No such option '--bogus'"),
    ],
)
def test_bad_values_are_usage_errors(typed: list[Flow], args: list[str], message: str) -> None:
    code, out = invoke(typed[0], *args)
    assert code == 2
    assert message in out


def test_required_options(typed: list[Flow]) -> None:
    code, out = invoke(typed[1])
    assert code == 2
    assert "Missing option '--target'" in out
    code, out = invoke(typed[1], "--target", "ab", "--times", "2")
    assert (code, out) == (0, "abab\n")


def test_help(typed: list[Flow]) -> None:
    code, out = invoke(typed[0], "--help")
    assert code == 0
    assert "Show the parsed options." in out
    assert "Prints them as JSON" in out
    assert "Args:" not in out  # parameter docs go to the options instead
    assert "which hosts, as a selector" in out
    assert "only show what would run" in out
    assert "[default: all]" in out
    assert "--mode [fast|safe]" in out
    assert "--verbose" in out and "--no-verbose" not in out
    assert "--color / --no-color" in out
    assert typed[0].short_help == "Show the parsed options."
    assert typed[1].help == "Needs a target."


def test_flows_table(typed: list[Flow], tmp_path: Path) -> None:
    rows = flows_table(typed)
    assert [r["name"] for r in rows] == ["typed", "needs"]
    assert rows[0]["file"] == str(tmp_path / "flows.py")
    assert rows[0]["help"] == "Show the parsed options."
    params = {p["name"]: p for p in rows[0]["params"]}
    assert params["selector"] == {
        "name": "selector", "option": "--selector", "type": "str", "required": False,
        "default": "all", "help": "which hosts, as a selector",
    }  # fmt: skip
    assert params["save"]["type"] == "Path | None"
    assert params["mode"]["type"] == "fast|safe"
    assert params["tag"]["type"] == "list[str]"
    assert params["port"]["default"] == [22]
    assert params["dry_run"]["option"] == "--dry-run"
    assert rows[1]["params"][0] == {
        "name": "target", "option": "--target", "type": "str", "required": True,
        "default": None, "help": "",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("returned", "code"),
    [
        ("None", 0),
        ("0", 0),
        ("4", 4),
        ("True", 0),
        ("False", 1),
        ("Outcome.of([ok])", 0),
        ("Outcome.of([ok, bad])", 1),
        ("reactivex.of(ok, ok)", 0),
        ("reactivex.of(ok, bad)", 1),
        ("reactivex.throw(RuntimeError('boom'))", 1),
    ],
)
def test_exit_code_follows_the_return_value(tmp_path: Path, returned: str, code: int) -> None:
    path = write(
        tmp_path,
        f"""
        import reactivex
        from reops.flows import flow
        from reops.core.model import Outcome, Result

        ok = Result(host="a", op="t", status="ok", code=0)
        bad = Result(host="b", op="t", status="failed", code=3)

        @flow
        def f():
            return {returned}
        """,
    )
    assert invoke(resolve(str(path)))[0] == code


def test_input_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    inv = write(tmp_path, "[hosts.web1]\n", "inventory.toml")
    path = write(
        tmp_path,
        f"""
        from reops.flows import flow
        from reops.core.inventory import inventory

        @flow
        def f(selector: str = "all"):
            print(inventory({str(inv)!r}).select(selector).names)
        """,
    )
    f = resolve(str(path))
    assert invoke(f) == (0, "['web1']\n")
    code, out = invoke(f, "--selector", "web9")
    assert code == 2
    assert out.startswith("Error: no host named 'web9' (did you mean 'web1'?)")


def test_unsupported_parameter_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from reops.flows import flow

        @flow
        def f(x: dict[str, int] = {}):
            pass
        """,
    )
    with pytest.raises(FlowError) as e:
        load_flows(path)
    assert str(e.value) == (
        f"{path}:4: flow 'f': parameter 'x': unsupported type dict[str, int]; "
        "use str, int, float, bool, Path, Literal[...] or list[...]"
    )


def test_star_args_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "from reops.flows import flow\n@flow\ndef f(*hosts: str): pass\n")
    with pytest.raises(FlowError, match=r"flows\.py:2: flow 'f': \*hosts cannot be an option"):
        load_flows(path)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "from reops.flows import flow\n\n@flow\ndef f(:\n    pass\n")
    with pytest.raises(FlowError) as e:
        load_flows(path)
    assert str(e.value) == f"{path}:4: syntax error: invalid syntax"


def test_import_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "from reops.flows import flow\nimport no_such_module_xyz\n")
    with pytest.raises(FlowError) as e:
        load_flows(path)
    assert str(e.value) == (f"{path}:2: ModuleNotFoundError: No module named 'no_such_module_xyz'")


def test_error_raised_at_import_time(tmp_path: Path) -> None:
    path = write(tmp_path, "x = 1\n\n\ny = 1 / 0\n")
    with pytest.raises(FlowError) as e:
        load_flows(path)
    assert str(e.value) == f"{path}:4: ZeroDivisionError: division by zero"


def test_exit_at_import_time_is_an_error_not_an_exit(tmp_path: Path) -> None:
    path = write(tmp_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(FlowError) as e:
        load_flows(path)
    assert str(e.value) == f"{path}:2: SystemExit: 3"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match=r"nope\.py: no such flow file$"):
        load_flows(tmp_path / "nope.py")


def test_sibling_modules_import(tmp_path: Path) -> None:
    write(tmp_path, "GREETING = 'hi'\n", "helpers_for_flow_test.py")
    path = write(
        tmp_path,
        """
        from helpers_for_flow_test import GREETING
        from reops.flows import flow

        @flow
        def greet():
            print(GREETING)
        """,
    )
    assert invoke(resolve(str(path))) == (0, "hi\n")


def test_imported_flows_are_not_listed_twice(tmp_path: Path) -> None:
    write(tmp_path, "from reops.flows import flow\n@flow\ndef a(): pass\n", "lib_flows_x.py")
    path = write(
        tmp_path, "from lib_flows_x import a\nfrom reops.flows import flow\n@flow\ndef b(): pass\n"
    )
    assert [f.name for f in load_flows(path)] == ["b"]


def test_resolve(tmp_path: Path, typed: list[Flow]) -> None:
    path = tmp_path / "flows.py"
    assert resolve(f"{path}:typed").name == "typed"
    assert resolve(f"{path}:needs").name == "needs"
    assert resolve(f"{path}:needs_target").name == "needs"  # the function's name works too
    with pytest.raises(FlowError) as e:
        resolve(str(path))
    assert str(e.value) == f"{path} has 2 flows: typed, needs; pick one: {path}:typed"
    with pytest.raises(FlowError) as e:
        resolve(f"{path}:tyepd")
    assert str(e.value) == f"{path}: no flow 'tyepd' (did you mean 'typed'?); flows: typed, needs"


def test_resolve_a_file_without_flows(tmp_path: Path) -> None:
    path = write(tmp_path, "x = 1\n", "plain.py")
    with pytest.raises(FlowError, match=r"plain\.py: defines no @flow functions$"):
        resolve(str(path))


def test_find_flows_reports_broken_files_and_lists_the_rest(tmp_path: Path) -> None:
    write(tmp_path, "from reops.flows import flow\n@flow\ndef one(): pass\n", "a.py")
    write(tmp_path, "from reops.flows import flow\n@flow\ndef two(): pass\n", "sub/b.py")
    write(tmp_path, "def broken(:\n", "sub/c.py")
    write(tmp_path, "raise SystemExit\n", ".hidden/d.py")
    errors: list[FlowError] = []
    found = find_flows(tmp_path, errors)
    assert [(f.name, f.file.name if f.file else "") for f in found] == [
        ("one", "a.py"),
        ("two", "b.py"),
    ]
    assert [str(e) for e in errors] == [f"{tmp_path / 'sub/c.py'}:1: syntax error: invalid syntax"]


def test_find_flows_prints_errors_when_not_collecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "import no_such_module_xyz\n", "bad.py")
    assert find_flows(tmp_path) == []
    assert capsys.readouterr().err == (
        f"warning: {tmp_path / 'bad.py'}:1: ModuleNotFoundError: "
        "No module named 'no_such_module_xyz'\n"
    )


def test_find_flows_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="no such directory"):
        find_flows(tmp_path / "nope")


def test_decorator_keeps_the_function_callable() -> None:
    @flow
    def add(a: int, b: int = 2) -> int:
        return a + b

    @flow(name="sub")
    def subtract(a: int, b: int) -> int:
        return a - b

    @flow
    def scale(x: int, /, factor: int = 2) -> int:
        return x * factor

    assert add(1) == 3 and subtract(3, 1) == 2
    assert invoke(Flow.of(scale), "--x", "3", "--factor", "5")[0] == 15
    assert Flow.of(add).name == "add" and Flow.of(subtract).name == "sub"
    assert invoke(Flow.of(add), "--a", "5")[0] == 7


def test_example_hello_flow() -> None:
    f = resolve(str(ROOT / "flows/examples/hello.py"))
    assert invoke(f, "--name", "fleet", "--times", "2") == (0, "hello, fleet\nhello, fleet\n")


LONG_RUNNING = """
import reactivex
from reactivex.disposable import Disposable
from reops.flows import flow

@flow
def watch():
    def subscribe(observer, scheduler=None):
        print("subscribed", flush=True)
        return Disposable(lambda: print("disposed", flush=True))
    return reactivex.create(subscribe)
"""


def test_a_long_running_flow_lives_until_ctrl_c(tmp_path: Path) -> None:
    path = write(tmp_path, LONG_RUNNING)
    code = f"from reops.flows import resolve; resolve({str(path)!r}).command().main([])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "subscribed\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out == "disposed\n"
    assert proc.returncode == 130

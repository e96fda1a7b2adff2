"""Saved flows: Python files whose `@flow` functions become `reops run` commands.

A flow is an ordinary typed function; its parameters become command-line options, so the
same code runs from the REPL (call it) and from the shell (`reops run FILE[:FUNC] --opt v`)::

    from reops.flows import flow

    @flow
    def fleet_report(selector: str = "all", save: Path | None = None) -> Outcome:
        \"\"\"Uptime and disk of every host.\"\"\"
        ...

Parameter types map to options: str, int, float, Path, bool (`--x/--no-x`), Literal[...]
(a choice), list[X] / tuple[X, ...] (repeatable), `X | None` (optional, default None).
A parameter without a default is a required option. `Annotated[X, "help"]` or a
Google-style `Args:` section in the docstring gives an option its help.

What the function returns becomes the exit code: None → 0, an int → itself, a bool →
0/1, an Outcome → `outcome.exit_code`, a Stream → run to completion, then its Outcome.
A long-running flow returns an Observable (or a subscription/Disposable): the command keeps
it alive until it completes or the user presses Ctrl-C, which disposes it (exit 130).
"""

from __future__ import annotations

import difflib
import inspect
import pathlib
import re
import threading
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import click

from reops.core.inventory import InventoryError
from reops.core.model import Outcome, Result
from reops.core.pyfile import import_file
from reops.core.runtime import deferred_interrupts
from reops.core.selector import SelectorError

__all__ = [
    "Flow",
    "FlowError",
    "Param",
    "find_flows",
    "flow",
    "flows_table",
    "keep_alive",
    "load_flows",
    "resolve",
]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__reops_flow__"
#: exit code for Ctrl-C, as shells report SIGINT
INTERRUPTED = 130
_NONE_TYPE = type(None)


class FlowError(ValueError):
    """A flow file or spec that cannot be used: one line, `file:line: what`."""


# ── the decorator ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Mark:
    name: str | None
    help: str | None


@overload
def flow(func: F, /) -> F: ...
@overload
def flow(*, name: str | None = None, help: str | None = None) -> Callable[[F], F]: ...


def flow(
    func: F | None = None, /, *, name: str | None = None, help: str | None = None
) -> F | Callable[[F], F]:
    """Mark `func` as a saved flow; `@flow` or `@flow(name="x", help="...")`.

    The function is returned unchanged, so it can still be called directly.
    """

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@flow decorates functions, got {f!r}")
        setattr(f, _MARK, _Mark(name, help))
        return f

    return mark(func) if func is not None else mark


# ── parameters ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Param:
    """One function parameter as a command-line option."""

    name: str  # the Python name
    type: str  # as shown to users: "str", "int", "Path", "a|b", "list[str]"
    default: Any
    required: bool
    help: str = ""
    kind: Any = field(default=None, repr=False, compare=False)  # the click ParamType
    multiple: bool = False
    is_flag: bool = False
    positional: bool = False  # positional-only in Python: passed by position
    convert: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def click_option(self) -> click.Option:
        # a flag that is off by default is just `--x`; one that is on needs `--no-x`
        on = self.is_flag and bool(self.default)
        decl = f"{self.option}/--no-{self.option[2:]}" if on else self.option
        default = self.default
        if self.multiple and default is not None:
            default = tuple(default)
        extra: dict[str, Any] = {} if self.required else {"default": default}
        return click.Option(  # a required option gets no default: click treats None as a value
            [decl, self.name],
            type=None if self.is_flag else self.kind,
            required=self.required,
            multiple=self.multiple,
            is_flag=self.is_flag or None,
            show_default=not self.required and not self.is_flag and default not in (None, ()),
            help=self.help or None,
            **extra,
        )


_SCALARS: dict[Any, tuple[str, Any]] = {
    str: ("str", click.STRING),
    int: ("int", click.INT),
    float: ("float", click.FLOAT),
    Path: ("Path", click.Path(path_type=Path)),
    pathlib.PurePath: ("Path", click.Path(path_type=Path)),
}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None` / Optional[X]; (tp, False) otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not _NONE_TYPE]
        if len(args) < len(typing.get_args(tp)):
            if len(args) == 1:
                return args[0], True
            return typing.Union[tuple(args)], True  # noqa: UP007 - rebuilt at runtime
    return tp, False


def _scalar(tp: Any) -> tuple[str, Any, Callable[[Any], Any] | None] | None:
    """(shown type, click type, converter) for an element type, or None if unsupported."""
    if tp in _SCALARS:
        shown, kind = _SCALARS[tp]
        return shown, kind, None
    if typing.get_origin(tp) is Literal:
        values = typing.get_args(tp)
        by_text = {str(v): v for v in values}
        convert = None if all(isinstance(v, str) for v in values) else by_text.__getitem__
        return "|".join(by_text), click.Choice(list(by_text)), convert
    return None


def _type_name(tp: Any) -> str:
    if typing.get_args(tp) or not hasattr(tp, "__name__"):
        return repr(tp).replace("typing.", "")
    return str(tp.__name__)


def _param(p: inspect.Parameter, tp: Any, help_: str) -> Param:
    """How one parameter maps to an option; raises TypeError if its type cannot."""
    has_default = p.default is not inspect.Parameter.empty
    default = p.default if has_default else None
    if typing.get_origin(tp) is typing.Annotated:
        tp, *meta = typing.get_args(tp)
        help_ = next((m for m in meta if isinstance(m, str)), help_)
    if tp is inspect.Parameter.empty:  # unannotated: from the default, else a string
        tp = type(default) if has_default and default is not None else str
    tp, optional = _strip_optional(tp)
    positional = p.kind is inspect.Parameter.POSITIONAL_ONLY
    common: dict[str, Any] = {"name": p.name, "help": help_, "positional": positional}
    if tp is bool:
        return Param(type="bool", default=bool(default), required=False, is_flag=True, **common)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        inner = _scalar(args[0]) if len(set(args)) == 1 else None
        if inner is None:
            raise TypeError(f"unsupported type {_type_name(tp)}; use list[str] or list[int]")
        shown, kind, convert = inner
        container = tuple if (origin or tp) is tuple else list

        def many(values: Any, convert: Any = convert, container: Any = container) -> Any:
            return container(convert(v) if convert else v for v in values)

        required = not has_default
        return Param(
            type=f"list[{shown}]",
            default=default if has_default else None,
            required=required,
            kind=kind,
            multiple=True,
            convert=many,
            **common,
        )
    scalar = _scalar(tp)
    if scalar is None:
        raise TypeError(
            f"unsupported type {_type_name(tp)}; "
            "use str, int, float, bool, Path, Literal[...] or list[...]"
        )
    shown, kind, convert = scalar
    return Param(
        type=shown + (" | None" if optional else ""),
        default=default,
        required=not has_default,
        kind=kind,
        convert=convert,
        **common,
    )


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters|Params):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _split_doc(doc: str) -> tuple[str, dict[str, str]]:
    """(help without the Args section, {param: help}) from a Google-style docstring."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    body: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if in_args:
            m = _ARG_LINE.match(line)
            if m:
                current = m.group(1)
                params[current] = m.group(2).strip()
                continue
            if line.strip() and line.startswith((" ", "\t")) and current:
                params[current] += " " + line.strip()
                continue
            if not line.strip():
                continue
            in_args = False
        body.append(line)
    return "\n".join(body).strip(), params


# ── flows ───────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Flow:
    """A loaded flow: its function, where it lives, and its options."""

    name: str
    func: Callable[..., Any] = field(repr=False)
    file: Path | None
    line: int
    help: str
    params: tuple[Param, ...]

    @property
    def short_help(self) -> str:
        return self.help.strip().splitlines()[0] if self.help.strip() else ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else self.name

    @classmethod
    def of(cls, func: Callable[..., Any], file: Path | None = None) -> Flow:
        """The Flow for a function (decorated or not); raises FlowError on unusable params."""
        mark: _Mark = getattr(func, _MARK, _Mark(None, None))
        name = mark.name or func.__name__
        code = getattr(func, "__code__", None)
        line = code.co_firstlineno if code else 0
        where = f"{file or getattr(code, 'co_filename', '?')}:{line}"
        body, arg_help = _split_doc(inspect.getdoc(func) or "")
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as e:
            raise FlowError(f"{where}: flow {name!r}: cannot read annotations: {e}") from None
        params = []
        for p in inspect.signature(func).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise FlowError(
                    f"{where}: flow {name!r}: *{p.name} cannot be an option; name each parameter"
                )
            try:
                params.append(_param(p, hints.get(p.name, p.annotation), arg_help.get(p.name, "")))
            except TypeError as e:
                raise FlowError(f"{where}: flow {name!r}: parameter {p.name!r}: {e}") from None
        return cls(
            name=name,
            func=func,
            file=file,
            line=line,
            help=mark.help if mark.help is not None else body,
            params=tuple(params),
        )

    def call(self, **options: Any) -> Any:
        """Call the function with option values as click parsed them (converted here)."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in self.params:
            value = options.get(p.name, p.default)
            if p.multiple and not value and p.default is None:
                value = None  # click gives () for an unused repeatable option
            elif p.convert is not None and value is not None:
                value = p.convert(value)
            if p.positional:
                args.append(value)
            else:
                kwargs[p.name] = value
        return self.func(*args, **kwargs)

    def command(self, keep: Callable[[Any], int] | None = None) -> click.Command:
        """A click command running this flow; its exit code follows what the flow returns.

        `keep` decides how a returned Observable or Disposable is kept running; the
        default (module `keep_alive`) blocks until it completes or Ctrl-C.
        """

        def callback(**options: Any) -> None:
            try:
                result = self.call(**options)
                code = exit_code(result, keep or keep_alive)
            except (InventoryError, SelectorError) as e:
                raise _InputError(str(e)) from None
            except KeyboardInterrupt:
                code = INTERRUPTED
            click.get_current_context().exit(code)

        return click.Command(
            name=self.name,
            callback=callback,
            params=[p.click_option() for p in self.params],
            help=self.help or None,
            short_help=self.short_help or None,
        )


class _InputError(click.ClickException):
    """Bad input the flow was given (inventory, selector): exit 2, no traceback."""

    exit_code = 2


def exit_code(result: Any, keep: Callable[[Any], int]) -> int:
    """The exit code for what a flow returned (see the module docstring)."""
    if result is None:
        return 0
    if isinstance(result, bool):
        return 0 if result else 1
    if isinstance(result, int):
        return result
    if isinstance(result, Outcome):
        return result.exit_code
    if callable(getattr(result, "run", None)) and hasattr(result, "observable"):  # a Stream
        return exit_code(result.run(), keep)
    if callable(getattr(result, "subscribe", None)) or callable(getattr(result, "dispose", None)):
        return keep(result)
    raise TypeError(
        f"a flow returns None, an int, a bool, an Outcome, a Stream or an Observable; "
        f"got {type(result).__name__}"
    )


def keep_alive(running: Any) -> int:
    """Block until an Observable completes, or until Ctrl-C; dispose it on the way out.

    Exit code: 1 if the stream errored or carried a failed Result, the last Outcome's
    code if it carried Outcomes, else 0; 130 after Ctrl-C.
    """
    done = threading.Event()
    state: dict[str, Any] = {"code": 0}

    def on_next(item: Any) -> None:
        if isinstance(item, Result) and not item.ok:
            state["code"] = 1
        elif isinstance(item, Outcome):
            state["code"] = item.exit_code

    def on_error(e: Exception) -> None:
        click.echo(f"error: {e}", err=True)
        state["code"] = 1
        done.set()

    subscription: Any = None
    try:
        if callable(getattr(running, "subscribe", None)):
            with deferred_interrupts():  # so a Ctrl-C cannot lose the subscription
                subscription = running.subscribe(
                    on_next=on_next, on_error=on_error, on_completed=done.set
                )
        else:
            subscription = running
        done.wait()  # only Ctrl-C ends a bare Disposable
    except KeyboardInterrupt:
        state["code"] = INTERRUPTED
    finally:
        if subscription is not None:
            subscription.dispose()
    code: int = state["code"]
    return code


# ── loading flow files ──────────────────────────────────────────────────────────────────


def _import(path: Path) -> types.ModuleType:
    return import_file(path, FlowError, "flow file")


def load_flows(path: str | Path) -> list[Flow]:
    """The `@flow` functions defined in the Python file at `path`, in source order.

    The file runs as a module with a unique name (never `__main__`); its directory joins
    sys.path, as with `python FILE`, so flows can import helper modules beside them.
    """
    p = Path(path)
    module = _import(p)
    funcs = [
        f
        for f in vars(module).values()
        if callable(f) and hasattr(f, _MARK) and getattr(f, "__module__", None) == module.__name__
    ]
    funcs.sort(key=lambda f: getattr(getattr(f, "__code__", None), "co_firstlineno", 0))
    return [Flow.of(f, p) for f in funcs]


def find_flows(directory: str | Path, errors: list[FlowError] | None = None) -> list[Flow]:
    """Every flow in the *.py files under `directory`, sorted by file then line.

    A broken file does not hide the others: its FlowError goes into `errors` when given,
    else it is printed as one line on stderr.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FlowError(f"{root}: no such directory")
    found: list[Flow] = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root).parts
        if any(part.startswith(".") or part == "__pycache__" for part in rel):
            continue
        try:
            found.extend(load_flows(file))
        except FlowError as e:
            if errors is None:
                click.echo(f"warning: {e}", err=True)
            else:
                errors.append(e)
    return found


def _names(flows: Iterable[Flow]) -> list[str]:
    return [f.name for f in flows]


def resolve(spec: str) -> Flow:
    """The flow named by `FILE[:FUNC]`; FILE alone must hold exactly one flow."""
    file, sep, func = spec.rpartition(":")
    if not sep or not re.fullmatch(r"[\w.-]+", func) or Path(spec).is_file():
        file, func = spec, ""
    if not file:
        raise FlowError(f"{spec!r}: expected FILE[:FUNC], e.g. flows/report.py:fleet_report")
    flows = load_flows(file)
    if not flows:
        raise FlowError(f"{file}: defines no @flow functions")
    if not func:
        if len(flows) == 1:
            return flows[0]
        raise FlowError(
            f"{file} has {len(flows)} flows: {', '.join(_names(flows))}; "
            f"pick one: {file}:{flows[0].name}"
        )
    for f in flows:
        if func in (f.name, f.func.__name__):
            return f
    near = difflib.get_close_matches(func, _names(flows), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise FlowError(f"{file}: no flow {func!r}{hint}; flows: {', '.join(_names(flows))}")


def _shown(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def flows_table(flows: Iterable[Flow]) -> list[dict[str, Any]]:
    """Rows for printing flows: name, file, line, help, and each parameter's option."""
    return [
        {
            "name": f.name,
            "file": str(f.file) if f.file else "",
            "line": f.line,
            "help": f.short_help,
            "params": [
                {
                    "name": p.name,
                    "option": p.option,
                    "type": p.type,
                    "required": p.required,
                    "default": _shown(p.default),
                    "help": p.help,
                }
                for p in f.params
            ],
        }
        for f in flows
    ]

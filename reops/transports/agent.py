"""The agent transport: run ops through the hub (`--via agent`), ship code, list agents.

The stream side (call, schedule, agent_events) is `reops.streams.agents`.

The hub (`reops hub`) owns the agent connections; everything here talks to it over its
local control socket. Results have transport "agent" and the same fields and meaning as
over SSH; a host whose agent is not connected is "unreachable" with code -1.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import dis
import inspect
import linecache
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reops.control.client import (
    HubClient,
    HubError,
    HubGone,
    HubNotRunning,
    default_path,
    request_sync,
)
from reops.control.identity import is_agent_for
from reops.control.wire import LineItem, ResultItem
from reops.core.model import UNREACHED, Host, Hosts, Line, Result, Status, failure_result
from reops.core.selector import select, standard_atoms
from reops.core.settings import Settings
from reops.ops.base import CodeRef, Op
from reops.transports.agent_calls import call_params as _params
from reops.transports.agent_calls import (
    connected_records,
    hub_gone,
    hub_refused,
    no_result,
    refusal,
)
from reops.transports.agent_calls import to_result as _result
from reops.transports.base import Executor, LineSink

#: how long `available()` / `connected()` trust their list of connected agents
AVAILABLE_TTL_S = 1.0
#: how long `connected()` waits for the hub's list (it awaits: the loop runs on meanwhile)
CONNECTED_TIMEOUT_S = 3.0


def ship(fn: Callable[..., Any]) -> CodeRef:
    """The shipped-code reference for `fn`: its own source and what it needs, nothing else.

    Only the function travels (never the rest of its file, whose top-level code must not
    run on agents): its source, dedented, decorators and annotations dropped; plus the
    globals and closure variables it uses, when they are modules (imported by name), plain
    data (literals), or functions (their source, or imported by name from their module).
    Anything else is refused here, before anything is sent.
    """
    return _Shipper(fn).ship()


class _Shipper:
    """Builds the module source for one shipped function (see `ship`)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.root = fn
        self.imports: dict[str, str] = {}  # name → import statement
        self.data: dict[str, str] = {}  # name → assignment
        self.functions: dict[str, str] = {}  # name → source
        self.seen: set[int] = set()

    def refuse(self, why: str) -> ValueError:
        name = getattr(self.root, "__qualname__", repr(self.root))
        return ValueError(f"cannot ship {name} to agents: {why}")

    def ship(self) -> CodeRef:
        fn = self.root
        if not inspect.isfunction(fn):
            raise self.refuse(f"{type(fn).__name__} is not a plain Python function (pass a "
                              "function defined with def or lambda)")
        name = "_reops_lambda" if fn.__name__ == "<lambda>" else fn.__name__
        self.add_function(name, fn)
        parts = [*sorted(set(self.imports.values())), *self.data.values(),
                 *self.functions.values()]
        return CodeRef(source="\n".join(parts) + "\n", function=name)

    def add_function(self, name: str, fn: Any) -> None:
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        source, needed = _isolated_source(fn, name, self.refuse)
        closure = dict(zip(fn.__code__.co_freevars,
                           (c.cell_contents for c in fn.__closure__ or ()), strict=False))
        for var in sorted(set(_global_names(fn.__code__)) | needed):
            if var in closure:
                self.add_value(var, closure[var])
            elif var in fn.__globals__:
                self.add_value(var, fn.__globals__[var])
            elif not hasattr(builtins, var):
                raise self.refuse(f"it uses {var!r}, which is not defined")
        for var, value in closure.items():
            self.add_value(var, value)
        self.functions[name] = source

    def add_value(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType):
            mod = value.__name__
            if mod == "__main__" or not mod:
                raise self.refuse(f"it uses the script module {name!r}")
            self.imports[name] = (f"import {mod}" if name == mod.split(".")[0] and "." not in
                                  mod else f"import {mod} as {name}")
            return
        if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
            mod = getattr(value, "__module__", None) or ""
            qual = getattr(value, "__qualname__", "")
            if mod and mod != "__main__" and mod != self.root.__module__ and "." not in qual \
                    and "<" not in qual:
                self.imports[name] = (f"from {mod} import {qual}" if qual == name
                                      else f"from {mod} import {qual} as {name}")
                return
            if inspect.isfunction(value):
                self.add_function(name, value)
                return
            raise self.refuse(f"it uses {name!r} ({type(value).__name__} from {mod or '?'}), "
                              "which cannot be shipped: define it in an importable module")
        if not _plain(value):
            raise self.refuse(f"it uses {name!r}, a {type(value).__name__}, which is neither "
                              "plain data nor an importable module: pass it as an argument")
        self.data[name] = f"{name} = {value!r}"


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether `value` is literal data whose repr gives it back (what can be shipped)."""
    if depth > 20:
        return False
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, frozenset) or type(value) not in (list, tuple, set):
            return False
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _global_names(code: types.CodeType) -> Iterator[str]:
    """Global names `code` (and code nested in it) loads or stores."""
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"):
            yield str(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _isolated_source(fn: Any, name: str, refuse: Callable[[str], ValueError],
                     ) -> tuple[str, set[str]]:
    """`fn`'s own source as a module-level definition named `name`, and the names its
    default values use; refused when its source cannot be found or isolated."""
    code = fn.__code__
    filename = code.co_filename
    text = "".join(linecache.getlines(filename, fn.__globals__))
    if not text:
        raise refuse("its source is not available (define it in a .py file)")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        raise refuse(f"its file {filename} does not parse") from None
    line = code.co_firstlineno
    nodes: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            starts = (node.lineno, *(d.lineno for d in node.decorator_list))
            if node.name == fn.__name__ and line in starts:
                nodes.append(node)
        elif isinstance(node, ast.Lambda) and (fn.__name__, node.lineno) == ("<lambda>", line):
            nodes.append(node)
    if len(nodes) > 1:  # several lambdas on one line: the one whose code is fn's
        nodes = [n for n in nodes if _same_code(n, code)]
    if not nodes:
        raise refuse(f"its source cannot be isolated in {filename} line {line} (give it a "
                     "name with def)")
    node = nodes[0]
    needed: set[str] = set()
    if isinstance(node, ast.Lambda):
        defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        source = f"{name} = {ast.unparse(node)}"
    else:
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        node.decorator_list = []
        node.returns = None
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                arg.annotation = None
        node.name = name
        defaults = [*args.defaults, *(d for d in args.kw_defaults if d)]
        source = ast.unparse(node)
    for d in defaults:
        needed |= {n.id for n in ast.walk(d) if isinstance(n, ast.Name)}
    return source, needed


def _same_code(node: ast.AST, code: types.CodeType) -> bool:
    try:
        compiled = compile(ast.Expression(ast.fix_missing_locations(node)), "<ship>",  # type: ignore[arg-type]
                           "eval")
    except (SyntaxError, TypeError, ValueError):
        return False
    inner = [c for c in compiled.co_consts if isinstance(c, types.CodeType)]
    return bool(inner) and _shape(inner[0]) == _shape(code)


#: instructions that only set up a function's variables (differ between a closure and the
#: same lambda compiled alone)
_SETUP_OPS = frozenset({"RESUME", "COPY_FREE_VARS", "MAKE_CELL", "CACHE", "NOP"})
_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_LOAD_OPS = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_GLOBAL", "LOAD_NAME",
                       "LOAD_CLASSDEREF", "LOAD_CLOSURE"})


def _shape(code: types.CodeType) -> tuple[Any, ...]:
    """What tells two lambdas on one line apart, the same whether a name is a closure
    variable (in `fn`) or a global (the lambda compiled alone): the operations, with
    loads of any kind of variable counted as one."""
    ops: list[tuple[str, Any]] = []
    for ins in dis.get_instructions(code):
        if ins.opname in _SETUP_OPS:
            continue
        name = "LOAD_VAR" if ins.opname in _LOAD_OPS else ins.opname
        arg = _shape(ins.argval) if isinstance(ins.argval, types.CodeType) else ins.argval
        if ins.opcode in _JUMPS:  # absolute targets move with the setup instructions
            arg = None
        ops.append((name, arg if isinstance(arg, (str, int, float, bytes, tuple)) else
                    repr(arg)))
    return code.co_argcount, code.co_kwonlyargcount, tuple(ops)


class AgentExecutor:
    """The agent transport: implements `reops.transports.base.Executor` through the hub."""

    transport = "agent"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._client: HubClient | None = None
        self._connected: frozenset[str] = frozenset()
        self._agents: dict[str, dict[str, Any]] = {}  # connected agents' records, by name
        self._checked = float("-inf")
        self._checked_path: Path | None = None
        self._refresh: asyncio.Future[None] | None = None

    async def _hub(self) -> HubClient:
        """The control connection, re-made if the configured hub moved (REOPS_HOME)."""
        path = self.path or default_path()
        if self._client is not None and self._client.path != path:
            await self._client.close()
            self._client = None
        if self._client is None:
            self._client = HubClient(path)
        return self._client

    def _stale(self, path: Path) -> bool:
        return time.monotonic() - self._checked > AVAILABLE_TTL_S or path != self._checked_path

    async def available(self, host: Host) -> bool:
        """Whether `host.name`'s agent is connected and accepted (the Executor contract;
        awaits the hub's answer, so the event loop never blocks on it)."""
        return await self.connected(host)

    async def connected(self, host: Host) -> bool:
        """Whether `host.name`'s agent is connected; waits for the hub without blocking
        the loop (one request a second at most, shared by every host asking)."""
        path = self.path or default_path()
        if self._stale(path):
            await asyncio.shield(self._start_refresh(path))
        return host.name in self._connected and await is_agent_for(
            host, self._agents.get(host.name))

    def _start_refresh(self, path: Path) -> asyncio.Future[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch(path))
        return self._refresh

    async def _fetch(self, path: Path) -> None:
        try:
            hub = await self._hub()
            await hub.connect()  # bounded by its own connect timeout
            listed = await asyncio.wait_for(hub.request("agents"), CONNECTED_TIMEOUT_S)
        except (HubNotRunning, HubGone, HubError, TimeoutError):
            listed = []
        self._agents = connected_records(listed)
        self._connected = frozenset(self._agents)
        self._checked, self._checked_path = time.monotonic(), path

    async def run(self, host: Host, op: Op, settings: Settings,
                  on_line: LineSink | None = None) -> Result:
        """Run `op` on `host`'s agent; never raises for the host's failure."""
        started, t0 = time.time(), time.monotonic()

        def fail(err: str, status: Status = "unreachable", code: int = UNREACHED) -> Result:
            return failure_result(host.name, op.name, err, status=status, code=code,
                                  started_at=started, duration_s=time.monotonic() - t0,
                                  transport="agent")

        if not await self.connected(host) and (why := refusal(host, self._agents)) is not None:
            return fail(why)  # another machine
        if op.kind in ("upload", "download", "sync"):  # sync: one file, as an upload
            # (here, not at the top: a plain call's CLI run skips the transfer machinery,
            # its tempfile/shutil and the agent's protocol module)
            from reops.transports.agent_transfer import transfer

            async def step(fn: str, args: list[Any], kwargs: dict[str, Any],
                           timeout: float | None) -> ResultItem:
                return await self._call(host, {"hosts": [host.name], "fn": fn, "args": args,
                                               "kwargs": kwargs, "timeout": timeout})

            return await transfer(step, host, op, settings)
        try:
            params = _params(host, op, settings, stream=on_line is not None)
        except ValueError as e:
            return fail(f"{op.name}: {e}", status="error", code=1)
        item = await self._result_item(host, params, on_line)
        if isinstance(item, tuple):
            return fail(item[1], item[0])
        return _result(host, op, item, started, time.monotonic() - t0)

    async def _call(self, host: Host, params: dict[str, Any],
                    on_line: LineSink | None = None) -> ResultItem:
        """One hub call's result item; CallFailed when it gave none."""
        item = await self._result_item(host, params, on_line)
        if isinstance(item, tuple):
            from reops.transports.agent_transfer import CallFailed

            raise CallFailed(*item)
        return item

    async def _result_item(self, host: Host, params: dict[str, Any],
                           on_line: LineSink | None = None
                           ) -> ResultItem | tuple[Status, str]:
        """One hub call's result item, or (status, why) when it gave none."""
        item: ResultItem | None = None
        try:
            hub = await self._hub()
            async for it in hub.pieces("call", **params):
                if isinstance(it, LineItem) and on_line is not None:
                    on_line(Line(host.name, it.stream, it.text))
                elif isinstance(it, ResultItem):
                    item = it
        except HubNotRunning as e:
            return "unreachable", str(e)
        except HubGone:  # the request was sent: the agent may be running it
            return hub_gone(host.name)
        except HubError as e:
            return hub_refused(host.name, e)
        if item is None:
            return no_result(host.name)
        return item

    async def close(self) -> None:
        """Close the control connection; safe to call twice."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None


class AutoExecutor:
    """`--via auto`: the agent where one is connected, SSH for the rest; the choice awaits
    the hub's answer, so the event loop never blocks on it."""

    transport = "auto"

    def __init__(self, agent: AgentExecutor, ssh: Executor) -> None:
        self.agent = agent
        self.ssh = ssh

    async def available(self, host: Host) -> bool:
        return True

    async def run(self, host: Host, op: Op, settings: Settings,
                  on_line: LineSink | None = None) -> Result:
        """Run `op` over the agent if `host` has one connected, else over SSH."""
        chosen: Executor = self.agent if await self.agent.available(host) else self.ssh
        return await chosen.run(host, op, settings, on_line)

    async def close(self) -> None:
        return None  # the two executors are closed by whoever made them


# ── the hub's registry as Hosts ─────────────────────────────────────────────────────


def agent_list(path: Path | None = None, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every agent the hub knows, with state, address, version and last beat."""
    agents: list[dict[str, Any]] = request_sync(path, "agents", timeout=timeout)
    return agents


def connected_agents(path: Path | None = None, timeout: float = 3.0) -> frozenset[str]:
    """Names of connected agents; empty when no hub runs."""
    try:
        return frozenset(connected_records(agent_list(path, timeout)))
    except (HubNotRunning, HubError):
        return frozenset()


class AgentHosts(Hosts):
    """Connected agents as Hosts, with the inventory's selector language."""

    __slots__ = ()

    def select(self, selector: str) -> AgentHosts:
        """Agents matching `selector` (`web*`, `tag:os=Linux`, `a,b`, `!c`…)."""
        hosts = list(self)
        return AgentHosts(select(hosts, selector, standard_atoms(hosts)))


def agents(hub: Path | str | None = None) -> AgentHosts:
    """The hub's connected agents as Hosts (`hub`: its control socket path)."""
    path = Path(hub) if hub is not None else None
    return AgentHosts(
        Host(name=a["name"], address=a.get("address") or a["name"],
             tags={"os": a.get("os", ""), "agent": a.get("version", "")},
             vars={"agent": a})
        for a in agent_list(path) if a.get("state") == "connected"
    )


__all__ = ["AgentExecutor", "AgentHosts", "AutoExecutor", "agent_list", "agents",
           "connected_agents", "default_path", "ship"]

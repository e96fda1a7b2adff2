"""The one-shot `reops exec --via agent`: one blocking request to the hub, no click, no
asyncio, no reactivex, no rich — the way git, hg's chg and `salt` keep a command's start-up
out of the user's wait.

`parse(argv)` accepts only what it serves exactly as the click CLI does: `exec`, `--via
agent`, `-i/--inventory`, `-o/--output pretty|json|jsonl`, `-t/--timeout`, `--lines N`,
`--full`, `--gather/--no-gather`, a selector and the command. Anything else (another flag,
`--help`, a value click would refuse, a repeated option) is None: `reops.cli.launch` runs
the click CLI instead. `run(plan)` may still hand over (None) before it sends the call — an
inventory or config error, no host selected, `sudo` in the config — so the click CLI says
it in its own words; a command runs at most once. (The agents list, a read-only request,
is asked for first thing, so the hub answers while the inventory is read.)

What it shows and records is made by the same parts as the full path's: the hub request
and the judging of its answers (`transports.agent_calls`), the identity check
(`control.identity`), the terminal rendering (`sinks.printer.Printer`), the Outcome, its
JSON and exit codes (`core.model`), the "run finished" hooks (the run history). Ctrl-C and
SIGTERM cancel the call on the hub (its agents kill the command) and report the hosts not
finished, exit 130/143; a closed pipe exits 141. REOPS_CLI_QUICK=0 always takes the full
path.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    from reops.control.wire import ResultItem
    from reops.core.model import Outcome, Result, Status
    from reops.ops.base import Op
    from reops.sinks.printer import Printer

#: options with a value: spelling → field
_VALUED = {"-i": "inventory", "--inventory": "inventory", "--via": "via", "-o": "output",
           "--output": "output", "-t": "timeout", "--timeout": "timeout",
           "--lines": "tail_lines"}
#: flags: spelling → (field, value)
_FLAGS = {"--full": ("full", True), "--gather": ("gather", True),
          "--no-gather": ("gather", False)}
_OUTPUTS = ("pretty", "json", "jsonl")


class Plan(NamedTuple):
    """A command line the quick path serves, read as click would read it."""

    selector: str
    command: tuple[str, ...]
    inventory: str | None = None
    output: str = "pretty"
    timeout: float | None = None
    tail_lines: int | None = None
    full: bool = False
    gather: bool = True


def parse(argv: list[str]) -> Plan | None:
    """`argv` (after `reops`) as a Plan, or None when the click CLI must read it."""
    if argv[:1] != ["exec"]:
        return None
    given: dict[str, Any] = {}
    words: list[str] = []
    rest = argv[1:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok == "--":
            words.extend(rest[i:])
            break
        if not tok.startswith("-") or tok == "-":
            if tok == "-":
                return None
            words.append(tok)
            continue
        name, eq, value = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if not tok.startswith("--") and len(tok) > 2:  # -ifile: a short option's value
            name, eq, value = tok[:2], "=", tok[2:]
        if name in _FLAGS and not eq:
            field, flag = _FLAGS[name]
            if field in given:
                return None
            given[field] = flag
            continue
        if name not in _VALUED:
            return None  # any other option, -h/--help, a flag given a value
        if not eq:
            if i >= len(rest):
                return None
            value = rest[i]
            i += 1
        field = _VALUED[name]
        if field in given or value.startswith("-"):
            return None
        given[field] = value
    if given.pop("via", None) != "agent" or len(words) < 2:
        return None
    return _checked(words[0], tuple(words[1:]), given)


def _checked(selector: str, command: tuple[str, ...], given: dict[str, Any]) -> Plan | None:
    """The Plan if click would accept every value (else None: click says what is wrong)."""
    import math

    if not " ".join(command).strip() or given.get("output", "pretty") not in _OUTPUTS:
        return None
    if "timeout" in given:
        try:
            timeout = float(given["timeout"])
        except ValueError:
            return None
        if not (math.isfinite(timeout) and timeout > 0):
            return None
        given["timeout"] = timeout
    if "tail_lines" in given:
        try:
            lines = int(given["tail_lines"])
        except ValueError:
            return None
        if lines < 0:
            return None
        given["tail_lines"] = lines
    return Plan(selector=selector, command=command, **given)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so both end the same way (exit 143)."""


class _Hub:
    """The hub's control socket, asked for the agents list as soon as the process starts
    (the answer comes while the inventory is read); read by `agents()`."""

    def __init__(self, path: Path) -> None:
        import zmq

        from reops.control.wire import encoder, make_request

        self.path = path
        self.linger = 0
        self.ctx: Any = None
        self.sock: Any = None
        self.monitor: Any = None
        self.poller: Any = None
        if not path.exists():
            return
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.sock.connect(f"ipc://{path}")
        self.sock.send(encoder.encode(make_request(1, "agents", {})))

    def agents(self) -> list[dict[str, Any]] | None:
        """The hub's agents records ([] when it refused the request); None: no hub answers
        within the client's connect timeout."""
        from reops.control.blocking import CONNECT_TIMEOUT
        from reops.control.wire import Done, Error, WireError, decode_reply

        if self.sock is None or self.poller is None:
            return None
        while True:
            if self.sock not in dict(self.poller.poll(int(CONNECT_TIMEOUT * 1000))):
                return None
            try:
                reply = decode_reply(self.sock.recv())
            except WireError:
                return []  # (the agent transport: a refused list is an empty one)
            if reply.id != 1:
                continue
            if isinstance(reply, Done):
                return reply.value if isinstance(reply.value, list) else []
            if isinstance(reply, Error):
                return []

    def close(self) -> None:
        if self.sock is not None:
            import zmq

            self.monitor.close(0)
            self.sock.setsockopt(zmq.LINGER, self.linger)
            self.sock.close()
            self.ctx.term()
            self.sock = None


class _Run:
    """One call through the hub: the hosts' Results as they come, printed and recorded."""

    def __init__(self, plan: Plan, hosts: Any, op: Op, params: dict[str, Any],
                 command: str) -> None:
        import time

        from reops.core.model import RunInfo

        self.info = RunInfo(command=command, selector=plan.selector)
        self.plan = plan
        self.hosts = hosts
        self.op = op
        self.params = params
        self.results: dict[str, Result] = {}
        self.terminated = False
        self.started, self.t0 = time.time(), time.monotonic()
        self.printer: Printer | None = None
        self.jsonl_extra = {"run_id": self.info.run_id}
        self.encode_line: Any = None

    def fail(self, name: str, status: Status, why: str) -> None:
        """`name` did not complete its call: a failure Result, as the agent transport's."""
        import time

        from reops.core.model import failure_result

        self.take(failure_result(name, self.op.name, why, status=status,
                                 started_at=self.started,
                                 duration_s=time.monotonic() - self.t0, transport="agent"))

    def ready(self) -> None:
        """Make what shows and records the Results: once the call is sent, so it loads
        while the agents work (Results taken before it are fed to the printer then)."""
        if self.plan.output == "pretty" and self.printer is None:
            from reops.sinks.gather import DEFAULT_LINES
            from reops.sinks.printer import Printer
            from reops.sinks.views import display

            plan = self.plan
            tail = None if plan.full else DEFAULT_LINES if plan.tail_lines is None \
                else plan.tail_lines
            self.printer = Printer(tail=tail, total=len(self.hosts), gather=plan.gather,
                                   live=False, hosts=self.hosts.names,
                                   terminated=lambda: self.terminated)
            self.printer.started = self.t0  # the run's time counts from the call, as each host's
            self.printer.start()
            for r in self.results.values():
                self.printer.result(display(r))
        from reops.core import hooks

        if hooks.active():  # the run history (what hooks.lazy names): loaded now, not after
            import reops.sinks.history  # noqa: F401

    def take(self, r: Result) -> None:
        """A host's Result: kept, then shown (pretty: held for the end; jsonl: a line)."""
        from reops.core.model import flat_result
        from reops.sinks.views import display

        self.results[r.host] = r
        if self.printer is not None:
            self.printer.result(display(r))
        elif self.encode_line is not None:
            out = sys.stdout
            for i, s in enumerate(r.steps):
                out.write(self.encode_line({**flat_result(s, i), **self.jsonl_extra}).decode()
                          + "\n")
            out.flush()

    def item(self, it: ResultItem) -> None:
        import time

        from reops.transports.agent_calls import to_result

        if it.host in self.hosts and it.host not in self.results:
            self.take(to_result(self.hosts[it.host], self.op, it, self.started,
                                time.monotonic() - self.t0))

    def rest(self, verdict: tuple[Status, str] | None = None, *,
             each: Any = None) -> None:
        """Every host still without a Result fails with `verdict`, or `each(name)`'s."""
        for name in self.hosts.names:
            if name not in self.results:
                status, why = verdict if verdict is not None else each(name)
                self.fail(name, status, why)

    def call(self, hub: _Hub) -> None:
        """The agents list (identity checks), then one call for every accepted host."""
        import time

        from reops.control.blocking import HubNotRunning
        from reops.control.wire import (
            Cancel,
            Error,
            ResultItem,
            Update,
            WireError,
            decode_reply,
            encoder,
            make_request,
        )
        from reops.transports.agent_calls import (
            connected_records,
            hub_gone,
            hub_refused,
            no_result,
            refusal,
        )

        self.started, self.t0 = time.time(), time.monotonic()  # as each host's run begins
        listed = hub.agents()
        if listed is None:  # no socket, or silent: as the client's connect says
            self.rest(("unreachable", str(HubNotRunning(hub.path))))
            return
        agents = connected_records(listed)
        for host in self.hosts:
            if (why := refusal(host, agents)) is not None:
                self.fail(host.name, "unreachable", why)
        names = [n for n in self.hosts.names if n not in self.results]
        if not names:
            return
        sock, monitor = hub.sock, hub.monitor
        assert sock is not None and monitor is not None and hub.poller is not None
        sent = False
        try:
            sock.send(encoder.encode(make_request(2, "call", {**self.params, "hosts": names})))
            sent = True
            self.ready()
            while True:
                ready = dict(hub.poller.poll())
                if sock in ready:
                    try:
                        reply = decode_reply(sock.recv())
                    except WireError as e:
                        self.rest(each=lambda n, e=e: hub_refused(n, f"bad reply: {e}"))
                        return
                    if reply.id != 2:
                        continue
                    if isinstance(reply, Update):
                        if isinstance(reply.item, ResultItem):
                            self.item(reply.item)
                        continue
                    sent = False  # the call is over: nothing to cancel
                    if isinstance(reply, Error):
                        self.rest(each=lambda n, m=reply.message: hub_refused(n, m))
                    else:
                        self.rest(each=no_result)
                    return
                if monitor in ready:
                    sent = False
                    self.rest(each=hub_gone)
                    return
        except KeyboardInterrupt:
            if sent:  # what already came is theirs (as the full path's barrier), then stop
                while sock.poll(0):
                    try:
                        reply = decode_reply(sock.recv())
                    except WireError:
                        continue
                    if reply.id == 2 and isinstance(reply, Update) and isinstance(
                            reply.item, ResultItem):
                        self.item(reply.item)
                sock.send(encoder.encode(Cancel(id=0, target=2)))
                hub.linger = 2000  # the Cancel reaches the hub before the process ends
            raise

    def outcome(self, interrupted: bool) -> Outcome:
        from reops.core.model import run_outcome

        return run_outcome(self.hosts.names, self.results, interrupted, self.info)


def run(plan: Plan) -> int | None:
    """Run `plan`; its exit code, or None (no call sent) for the click CLI to take over."""
    import shlex
    import signal

    hub: _Hub | None = None
    try:
        from reops.control.settings import load_hub_settings

        hub = _Hub(load_hub_settings().control_path)  # its answer comes while we read on
        prepared = _prepare(plan)
    except Exception:  # the click CLI reports it in its own words
        prepared = None
    except BaseException:
        if hub is not None:
            hub.close()
        raise
    if prepared is None or hub is None:
        if hub is not None:
            hub.close()
        return None
    hosts, op, params, note = prepared
    if note:
        sys.stderr.write(f"reops: note: {note}\n")
    job = _Run(plan, hosts, op, params, shlex.join(["reops", *sys.argv[1:]]))

    def on_sigterm(signum: int, frame: Any) -> None:
        job.terminated = True
        raise Terminated("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _finish(job, hub)
    except BrokenPipeError:  # `reops exec … | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _prepare(plan: Plan) -> tuple[Any, Op, dict[str, Any], str | None] | None:
    """Hosts, the Op, the call's parameters and a note; None: not ours."""
    from pathlib import Path

    from reops.core.inventory import default_path, inventory
    from reops.core.settings import fd_bounded, load_settings, raise_fd_limit
    from reops.ops.shell import exec_
    from reops.transports.agent_calls import call_params

    raise_fd_limit()  # as the click CLI's group does
    settings = load_settings()
    if settings.sudo:  # the stream source would make the command sudo: leave it to it
        return None
    if plan.timeout is not None:
        settings = settings.with_(command_timeout=plan.timeout)
    settings, note = fd_bounded(settings)
    path = Path(plan.inventory) if plan.inventory is not None else default_path()
    hosts = inventory(path).select(plan.selector)
    if not len(hosts):
        return None
    op = exec_(" ".join(plan.command))
    first = next(iter(hosts))
    params = call_params(first, op, settings, stream=False)
    if any(op.command_for(h) != params["args"][0] for h in hosts):
        return None  # a command that differs per host: one call per host, the full path's
    return hosts, op, params, note


def _finish(job: _Run, hub: _Hub) -> int:
    """Show, call, record, exit as `reops.cli.common.run_on_fleet` does."""
    from reops.core import hooks

    plan = job.plan
    if plan.output == "jsonl":
        import msgspec

        job.encode_line = msgspec.json.Encoder().encode
    interrupted = False
    try:
        job.call(hub)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        hub.close()
    job.ready()  # (when no call was sent)
    out = job.outcome(interrupted)
    if job.printer is not None:
        if interrupted:
            job.printer.finish_interrupted()
        else:
            job.printer.finish(list(job.results.values()))
    if hooks.active():
        hooks.outcome_finished(out)
    if plan.output == "json":
        sys.stdout.write(out.to_json().decode() + "\n")
        sys.stdout.flush()
    if out.interrupted:
        why = "terminated (SIGTERM)" if job.terminated else "interrupted"
        sys.stderr.write(f"reops: {why}: hosts not finished are reported as errors\n")
        return 143 if job.terminated else 130
    return out.exit_code

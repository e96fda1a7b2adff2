"""Partial failure in pipelines (issue 8): what `retry` re-runs, on real sshd hosts.

A remote command runs at most once per step: `retry` re-runs only hosts never reached
unless the caller asks for more with `when=`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from reactivex import operators as ops

from reops import Result, exec_, failed, retry, run, unreachable
from reops.lab import Lab, LabInfo
from reops.model import Event


def marker_cmd(tag: str, then_: str = "") -> str:
    """Append a line to a per-host marker file on the host, then `then_`."""
    return (f'echo x >> /tmp/reops-harden-{tag}-$(echo "$SSH_CONNECTION" | cut -d" " -f3)'
            + (f"; {then_}" if then_ else ""))


def runs_per_host(tag: str, info: LabInfo, names: list[str]) -> dict[str, int]:
    """How many times the command really ran on each host, read on the host (and cleaned)."""
    any_host = info.as_hosts()[names[0]]
    files = " ".join(f"/tmp/reops-harden-{tag}-{info.hosts[n]}" for n in names)
    out = run(exec_(any_host, f"for f in {files}; do if [ -e $f ]; then wc -l < $f; "
                    f"else echo 0; fi; done; rm -f {files}"))
    assert out.ok, out.failed[0].err
    return dict(zip(names, map(int, out.successful[0].out.split()), strict=True))


def test_retry_does_not_rerun_a_failing_command_by_default(lab: LabInfo) -> None:
    hosts = lab.as_hosts().glob("web*")
    once, again = uuid.uuid4().hex, uuid.uuid4().hex
    out = run(exec_(hosts, marker_cmd(once, "exit 1")) | retry(2))
    assert list(out.failure) == [1] and len(out.failure[1]) == len(hosts)
    assert set(runs_per_host(once, lab, hosts.names).values()) == {1}
    # asked for: failed hosts run again, up to the limit
    out = run(exec_(hosts, marker_cmd(again, "exit 1")) | retry(2, when=failed))
    assert list(out.failure) == [1]
    assert set(runs_per_host(again, lab, hosts.names).values()) == {3}


def test_retry_reaches_a_host_whose_sshd_came_back(lab_factory: Callable[..., Lab]) -> None:
    fleet = lab_factory(hosts=2)
    info = fleet.info
    up_name, down_name = list(info.hosts)
    fleet.stop_host(down_name)
    seen: list[tuple[str, str]] = []
    tag = uuid.uuid4().hex

    def bring_back(e: Event) -> None:
        """The down host's first attempt failed to connect: start its sshd before retry."""
        if isinstance(e, Result):
            seen.append((e.host, e.status))
            if e.host == down_name and unreachable(e):
                fleet.start_host(down_name)

    out = run(exec_(info.as_hosts(), marker_cmd(tag)) | ops.do_action(bring_back)
              | retry(1))
    assert out.ok, [r.err for r in out.failed]
    assert sorted(seen) == sorted([(up_name, "ok"), (down_name, "unreachable"),
                                   (down_name, "ok")])
    assert runs_per_host(tag, info, [up_name, down_name]) == {up_name: 1, down_name: 1}


"""SSH certificates and ssh-agent (issue 10 item 4), with a lab CA made by `ssh-keygen -s`
(sshd TrustedUserCAKeys / HostCertificate) and a real `ssh-agent` started by the test."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from reops import Host, exec_, run
from reops.core.settings import Settings
from reops.lab.fleet import Lab

FAST = Settings(connect_timeout=5.0, ssh_config=False)
#: seconds to wait for ssh-agent to create its socket
AGENT_START = 30.0


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


def new_key(path: Path) -> Path:
    keygen("-t", "ed25519", "-N", "", "-f", str(path))
    return path


def _restart_with(fleet: Lab, name: str, *lines: str) -> None:
    """Add sshd_config lines to one lab host and restart it (the lab re-reads the file)."""
    cfg = fleet.config_path(name)
    cfg.write_text(cfg.read_text() + "".join(f"{ln}\n" for ln in lines))
    fleet.stop_host(name)
    fleet.start_host(name)


class CertLab:
    """A one-host lab whose sshd trusts a user CA and presents a CA-signed host key."""

    def __init__(self, fleet: Lab) -> None:
        self.fleet = fleet
        info = fleet.info
        [self.name] = fleet.hosts
        self.root = info.root / "ca"
        self.root.mkdir()
        self.user_ca = new_key(self.root / "user_ca")
        self.host_ca = new_key(self.root / "host_ca")
        self.fqdn = info.names.get(self.name, fleet.hosts[self.name])
        host_key = fleet.host_dir(self.name) / "ssh_host_ed25519_key"
        keygen("-s", str(self.host_ca), "-h", "-I", self.name, "-n", self.fqdn,
               f"{host_key}.pub" if Path(f"{host_key}.pub").exists() else self._pub(host_key))
        cert = next(fleet.host_dir(self.name).glob("*-cert.pub"))
        _restart_with(fleet, self.name, f"TrustedUserCAKeys {self.user_ca}.pub",
                      f"HostCertificate {cert}")
        self.port = info.port
        self.user = info.user
        # known_hosts that trusts the host CA only: no plain key for this host at all
        self.known = self.root / "known_hosts"
        ca_pub = Path(f"{self.host_ca}.pub").read_text().strip()
        self.known.write_text(f"@cert-authority * {ca_pub}\n")

    @staticmethod
    def _pub(key: Path) -> str:
        pub = Path(f"{key}.pub")
        pub.write_text(subprocess.run(["ssh-keygen", "-y", "-f", str(key)], check=True,
                                      capture_output=True, text=True).stdout)
        return str(pub)

    def user_key(self, name: str, ca: Path | None = None, validity: str | None = None) -> Path:
        """A fresh key NOT in authorized_keys, with `name-cert.pub` signed by `ca`."""
        key = new_key(self.root / name)
        args = ["-s", str(ca or self.user_ca), "-I", name, "-n", self.user]
        if validity:
            args += ["-V", validity]
        keygen(*args, f"{key}.pub")
        return key

    def host(self, key: Path | None, known: Path | None = None) -> Host:
        return Host(name=self.name, address=self.fqdn, port=self.port, user=self.user,
                    key=None if key is None else str(key), known_hosts=str(known or self.known))


@pytest.fixture
def certlab(lab_factory) -> CertLab:  # type: ignore[no-untyped-def]
    return CertLab(lab_factory(hosts=1, names=True))


def test_user_certificate_beside_the_key(certlab: CertLab) -> None:
    """Old code loaded the bare key only: the server (which knows only the CA) said no."""
    key = certlab.user_key("signed")
    out = run(exec_(certlab.host(key), "id -un", settings=FAST))
    assert [r.out for r in out.results] == [f"{certlab.user}\n"], out.results[0].err
    # the host was verified by the @cert-authority line (there is no plain key for it)
    assert "@cert-authority" in certlab.known.read_text()


def test_expired_certificate_is_named(certlab: CertLab) -> None:
    key = certlab.user_key("old", validity="20200101:20200102")
    [r] = run(exec_(certlab.host(key), "true", settings=FAST)).results
    assert r.status == "unreachable"
    assert "certificate" in r.err and "expired at 2020-01-02" in r.err, r.err


def test_certificate_from_an_unknown_ca(certlab: CertLab) -> None:
    stranger = new_key(certlab.root / "stranger_ca")
    key = certlab.user_key("foreign", ca=stranger)
    [r] = run(exec_(certlab.host(key), "true", settings=FAST)).results
    assert r.status == "unreachable"
    assert "TrustedUserCAKeys" in r.err and str(key) in r.err, r.err


def test_host_certificate_from_an_unknown_ca(certlab: CertLab) -> None:
    other = new_key(certlab.root / "other_host_ca")
    known = certlab.root / "known_other"
    known.write_text(f"@cert-authority * {Path(f'{other}.pub').read_text().strip()}\n")
    key = certlab.user_key("fine")
    [r] = run(exec_(certlab.host(key, known), "true", settings=FAST)).results
    assert r.status == "unreachable"
    assert "signed by a CA that no @cert-authority line" in r.err, r.err


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    """A real ssh-agent (foreground, its own socket), stopped afterwards."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + AGENT_START
        assert proc.stdout is not None
        # it prints SSH_AUTH_SOCK=… once the socket listens: wait for that line
        ready, _, _ = select.select([proc.stdout], [], [], AGENT_START)
        assert ready and "SSH_AUTH_SOCK" in proc.stdout.readline()
        assert sock.exists() and time.monotonic() < deadline
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_keys_from_a_real_ssh_agent(lab_factory, agent: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fleet = lab_factory(hosts=1)
    info = fleet.info
    [host] = list(info.as_hosts())
    env = {**os.environ, "SSH_AUTH_SOCK": str(agent)}
    subprocess.run(["ssh-add", str(info.key)], env=env, check=True, capture_output=True)
    monkeypatch.setenv("HOME", str(info.root / "nohome"))  # no ~/.ssh/id_* to fall back on
    keyless = msgspec.structs.replace(host, key=None)
    # first without an agent (the same process, the same executor): a clear failure …
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent) + ".missing")
    [r] = run(exec_(keyless, "true", settings=FAST)).results
    assert r.status == "unreachable" and ".missing does not exist" in r.err, r.err
    # … then the agent is there: asyncssh's options (cached per fleet) must see it
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent))
    out = run(exec_(keyless, "echo via-agent", settings=FAST))
    assert [r.out for r in out.results] == ["via-agent\n"], out.results[0].err


def test_agent_certificate(certlab: CertLab, agent: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA-signed key held only by the agent (ssh-add loads KEY-cert.pub with it)."""
    key = certlab.user_key("agentcert")
    env = {**os.environ, "SSH_AUTH_SOCK": str(agent)}
    subprocess.run(["ssh-add", str(key)], env=env, check=True, capture_output=True)
    key.unlink()  # only the agent has it now
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent))
    monkeypatch.setenv("HOME", str(certlab.root / "nohome"))
    out = run(exec_(certlab.host(None), "true", settings=FAST))
    assert out.ok, out.results[0].err


def test_missing_agent_socket_is_named(lab_factory, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fleet = lab_factory(hosts=1)
    [host] = list(fleet.info.as_hosts())
    gone = tmp_path / "no-agent.sock"
    monkeypatch.setenv("SSH_AUTH_SOCK", str(gone))
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    [r] = run(exec_(msgspec.structs.replace(host, key=None), "true", settings=FAST)).results
    assert r.status == "unreachable"
    assert f"ssh-agent socket $SSH_AUTH_SOCK={gone} does not exist" in r.err, r.err

"""`reops lab up/down/status`: a local fleet of real sshd hosts for demos and tests."""

from __future__ import annotations

from pathlib import Path

import click

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).

DEFAULT_DIR = Path("lab")


@click.group("lab")
def lab() -> None:
    """A local fleet: real OpenSSH sshd hosts on loopback addresses 127.0.x.y.

    \b
      reops lab up --hosts 20       # prints the inventory path
      reops exec -i lab/inventory.toml all -- uname -a
      reops lab down
    """


@lab.command("up")
@click.option("--hosts", "count", type=click.IntRange(1, 60000), default=20, show_default=True)
@click.option("--dir", "root", type=click.Path(path_type=Path), default=DEFAULT_DIR,
              show_default=True, help="Where keys, configs and the inventory go.")
@click.option("--port", type=click.IntRange(1, 65535), default=2222, show_default=True)
@click.option("--first-address", default="127.0.1.1", show_default=True, metavar="ADDR",
              help="The first host's loopback address (127.x.y.z); the others follow it.")
@click.option("--agents", is_flag=True, help="Also start an agent per host, keys accepted.")
@click.option("--names/--no-names", default=True, show_default=True,
              help="Give hosts names in /etc/hosts (web1.<lab-id>.lab.reops.test; root only).")
@click.option("--private-fs/--shared-fs", "private_fs", default=True, show_default=True,
              help="Each host its own /tmp, home and /etc/motd (a private mount namespace; "
                   "root only).")
@click.option("--bastion", is_flag=True,
              help="Targets in a network namespace, reachable only through host 'bastion' "
                   "(inventory jump = \"bastion\", ROOT/ssh_config ProxyJump; root only).")
def up(count: int, root: Path, port: int, first_address: str, agents: bool, names: bool,
       private_fs: bool, bastion: bool) -> None:
    """Start COUNT sshd hosts and write ROOT/inventory.toml (and ROOT/ssh_config)."""
    from reops.lab.fleet import Lab, LabError

    if agents and bastion:
        raise LabError("--agents and --bastion do not go together: agents behind the "
                       "bastion could not reach the hub; pick one")
    fleet = Lab(root, hosts=count, base_port=port, names=names, private_fs=private_fs,
                bastion=bastion, first_address=_loopback(first_address))
    for note in fleet.notes:
        click.echo(note, err=True)
    info = fleet.up()
    if agents:
        from reops.cli.agents import start_lab_agents

        start_lab_agents(info)
    behind = " behind bastion (only reachable through it)" if bastion else ""
    click.echo(f"lab up: {count} hosts{behind} on port {port} as user {info.user}", err=True)
    if info.become_user:
        click.echo(f"lab: sudo: --sudo as {info.user}; with a password: "
                   f"-i {info.root / 'inventory-become.toml'} "
                   f"--become-pass-file {info.become_pass_file}", err=True)
    click.echo(str(info.inventory))


@lab.command("down")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=DEFAULT_DIR,
              show_default=True)
def down(root: Path) -> None:
    """Stop exactly the processes `lab up` started in ROOT."""
    from reops.lab.fleet import Lab

    lab_ = Lab.load(root)
    n = len(lab_.hosts)
    agents = 0
    if (Path(root) / "agents" / "agents.json").exists():
        from reops.cli.agents import stop_lab_agents

        agents = stop_lab_agents(root)
    lab_.down()
    more = f" and {agents} agents" if agents else ""
    click.echo(f"lab down: {n} hosts{more} stopped", err=True)


@lab.command("status")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=DEFAULT_DIR,
              show_default=True)
def status(root: Path) -> None:
    """Which lab hosts are up."""
    from reops.lab.fleet import Lab

    lab_ = Lab.load(root)
    st = lab_.status()
    for name, alive in st.items():
        where = f"{lab_.hosts[name]}:{lab_.port}"
        if fqdn := lab_.names.get(name):
            where = f"{fqdn} ({where})"
        if lab_.bastion and name != "bastion":
            where += " via bastion"
        click.echo(f"{'up  ' if alive else 'down'} {name} {where}")
    click.echo(f"{sum(st.values())}/{len(st)} up", err=True)


def _loopback(address: str) -> str:
    """A 127.0.0.0/8 address other than 127.0.0.1, or one clear error."""
    import ipaddress

    from reops.lab.fleet import LabError

    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise LabError(f"--first-address {address!r} is not an IPv4 address") from None
    if not ip.is_loopback or str(ip) == "127.0.0.1":
        raise LabError(f"--first-address {address}: use a 127.x.y.z address other than "
                       "127.0.0.1 (the lab listens on loopback only)")
    return str(ip)

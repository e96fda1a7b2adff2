"""Ansible inventories (-i hosts.ini / hosts.yml): the same hosts, groups and vars Ansible sees.

The corpus in tests/data/ansible/ is taken from Ansible's inventory guide; each case's
expected.json is `ansible-inventory -i FILE --list` (ansible-core 2.19), committed so the
comparison runs where Ansible is not installed, and re-checked against the live command
where it is (bench/.venv). Then selectors, a real exec over SSH on the lab, and every refusal
as one `file:line: what: what to do` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reops.core.ansible.patterns import PatternError, expand, split_port
from reops.core.ansible.tree import FIELDS
from reops.core.inventory import Inventory, InventoryError, inventory
from reops.lab.fleet import LabInfo

DATA = Path(__file__).parent / "data" / "ansible"
CASES = {"docs_ini": "hosts.ini", "docs_yaml": "hosts.yml", "vars_dirs": "hosts.ini"}
#: ansible-core is a dev dependency (the oracle); bench/.venv has it too
ANSIBLE_INVENTORY = next(
    (p for p in (Path(sys.executable).parent / "ansible-inventory",
                 Path(__file__).parent.parent / "bench" / ".venv" / "bin" / "ansible-inventory")
     if p.exists()), Path(sys.executable).parent / "ansible-inventory")
#: what ansible-inventory adds that is not inventory data
MAGIC = {"inventory_file", "inventory_dir", "playbook_dir", "ansible_playbook_python",
         "ansible_config_file", "groups", "group_names", "inventory_hostname",
         "inventory_hostname_short", "omit", "ansible_version", "ansible_check_mode",
         "ansible_diff_mode", "ansible_forks", "ansible_inventory_sources",
         "ansible_run_tags", "ansible_skip_tags", "ansible_verbosity"}


def reops(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120, env=env)


def members(listing: dict[str, Any]) -> dict[str, set[str]]:
    """Every group's hosts, its children's included, from an `ansible-inventory --list`."""

    def walk(g: str) -> set[str]:
        entry = listing.get(g, {})
        out = set(entry.get("hosts", []))
        for c in entry.get("children", []):
            out |= walk(c)
        return out

    return {g: walk(g) for g in listing if g != "_meta"}


def as_ansible(inv: Inventory, case: Path, listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """reops Hosts written back as Ansible hostvars: fields → the ansible_* var that set them."""
    out: dict[str, dict[str, Any]] = {}
    for h in inv:
        hv = dict(h.vars)
        original = listing["_meta"]["hostvars"].get(h.name, {})
        for var in original:  # which spelling the file used
            if var in FIELDS:
                field = FIELDS[var]
                value = getattr(h, field)
                if field == "key":
                    p = Path(os.path.expanduser(original[var]))
                    assert value == str(p if p.is_absolute() else (case / p).resolve())
                    value = original[var]
                hv[var] = value
        if "ansible_connection" in original:
            hv["ansible_connection"] = original["ansible_connection"]
        out[h.name] = hv
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_hosts_groups_and_vars_as_ansible_inventory(case: str) -> None:
    folder = DATA / case
    listing = json.loads((folder / "expected.json").read_text())
    inv = inventory(folder / CASES[case])

    hostvars = {h: {k: v for k, v in hv.items() if k not in MAGIC}
                for h, hv in listing["_meta"]["hostvars"].items()}
    assert sorted(inv.hosts.names) == sorted(members(listing)["all"])
    mine = as_ansible(inv, folder, listing)
    for name in inv.hosts.names:
        assert mine[name] == hostvars.get(name, {}), name
        h = inv[name]
        assert h.address == hostvars.get(name, {}).get("ansible_host", name)
        assert h.port == int(hostvars.get(name, {}).get("ansible_port", 22))
    want_groups = {g: hs for g, hs in members(listing).items() if g != "all" and hs}
    assert {g: set(s.hosts) for g, s in inv.groups.items() if s.hosts} == want_groups
    for h in inv:  # a host's groups: every group it is in, through children too
        assert set(h.groups) == {g for g, hs in want_groups.items() if h.name in hs}


@pytest.mark.skipif(not ANSIBLE_INVENTORY.exists(), reason="ansible-core is not installed "
                    "(the committed expected.json still pins the comparison)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_committed_expectations_are_what_ansible_says_today(case: str, tmp_path: Path) -> None:
    folder = DATA / case
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # no user or system config
    p = subprocess.run([str(ANSIBLE_INVENTORY), "-i", CASES[case], "--list"], cwd=folder,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
                            "ANSIBLE_LOCAL_TEMP": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    live = json.loads(p.stdout)
    live["_meta"].pop("profile", None)
    committed = json.loads((folder / "expected.json").read_text())
    committed["_meta"].pop("profile", None)
    assert live == committed


def test_selectors_work_unchanged_on_an_ansible_inventory() -> None:
    inv = inventory(DATA / "docs_ini" / "hosts.ini")
    assert inv.select("group:southeast").names == ["host1", "host2", "host3"]
    assert inv.select("group:usa & !group:atlanta").names == ["host3", "host4"]
    assert inv.select("group:ungrouped").names == ["mail.example.com"]
    assert inv.select("www0*").names == ["www01.example.com", "www03.example.com",
                                         "www05.example.com", "www07.example.com",
                                         "www09.example.com"]
    assert inv.select("tag:http_port=303").names == ["host2"]
    assert inv.select("tag:ntp_server=ntp.atlanta.example.com").names == ["host1", "host2"]
    dirs = inventory(DATA / "vars_dirs" / "hosts.ini")
    # webservers (under prod) is deeper than dc_ams: its vars win, priority or not
    assert dirs.select("tag:dc=ams").names == ["db1"]
    assert dirs.select("tag:dc=from-webservers").names == ["web1", "web2"]


def test_connection_vars_become_host_fields() -> None:
    inv = inventory(DATA / "docs_ini" / "hosts.ini")
    jumper, three = inv["jumper"], inv["three.example.com"]
    assert (jumper.address, jumper.port) == ("192.0.2.50", 5555)
    assert (three.port, three.user) == (5309, "dba")
    assert inv["host3"].key == str(DATA / "docs_ini" / "keys" / "raleigh_ed25519")
    assert inv.groups["southeast"].vars["dns_servers"] == ["10.0.0.1", "10.0.0.2"]
    db1 = inventory(DATA / "vars_dirs" / "hosts.ini")["db1"]
    assert (db1.user, db1.key) == ("postgres", os.path.expanduser("~/.ssh/db_ed25519"))
    assert "ansible_user" not in db1.vars and db1.vars["backup"] is True


@pytest.mark.parametrize(("pattern", "names"), [
    ("web[1:3]", ["web1", "web2", "web3"]),
    ("www[01:10:3].example", ["www01.example", "www04.example", "www07.example",
                              "www10.example"]),
    ("db-[a:c]", ["db-a", "db-b", "db-c"]),
    ("r[1:2]n[a:b]", ["r1na", "r1nb", "r2na", "r2nb"]),
    ("[:2]x", ["0x", "1x", "2x"]),
])
def test_host_ranges_expand_as_ansible_does(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


@pytest.mark.parametrize(("pattern", "problem"), [
    ("web[01:5]", "same width"), ("web[1:]", "no end"), ("web[3:x]", "numbers"),
    ("web[1:2:0]", "step"), ("web[c:a]", "begin <= end"), ("web[1:3", "not closed"),
])
def test_bad_ranges_say_what_is_wrong(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError, match=problem):
        expand(pattern)


def test_ports_split_like_ansible() -> None:
    assert split_port("web[01:03]:2222") == ("web[01:03]", 2222)
    assert split_port("[2001:db8::1]:2222") == ("2001:db8::1", 2222)
    assert split_port("host") == ("host", None)


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize(("name", "text", "where", "says"), [
    ("h.ini", "[win]\nw1 ansible_connection=winrm\n", "h.ini:2", "SSH only"),
    ("h.ini", "[web]\nw1\n[web:vars]\nansible_password=s3cret\n", "h.ini:4", "passwords"),
    ("h.ini", "[web]\nw1 ansible_host='{{ inventory_hostname }}.lan'\n", "h.ini:2", "Jinja"),
    ("h.ini", "[web]\nw1 ansible_port=99999\n", "h.ini:2", "between 1 and 65535"),
    ("h.ini", "[all:children]\nweb\n\n[db]\nd1\n", "h.ini:2", "declared nowhere"),
    ("h.ini", "[web:vars]\nx=1\n", "h.ini:1", "declared nowhere"),
    ("h.ini", "[web:hosts2]\n", "h.ini:1", "unknown type"),
    ("h.ini", "[web]\nw1 bogus\n", "h.ini:2", "key=value"),
    ("h.ini", "[web]\nw[01:3]\n", "h.ini:2", "same width"),
    ("h.ini", "[web]\n2001:db8::1\n", "h.ini:2", "ansible_host=2001:db8::1"),
    ("h.ini", "#!/usr/bin/env python3\nprint('{}')\n", "h.ini:1", "ansible-inventory"),
    ("h.yml", "plugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n", "h.yml:1",
     "ansible-inventory -i h.yml --list --yaml"),
    ("h.yml", "all:\n  hosts:\n    w1:\n      secret: !vault |\n        $ANSIBLE_VAULT;1.1\n",
     "h.yml:4", "vault"),
    ("h.yml", "all:\n  hosts:\n    w1:\n  host:\n    w2:\n", "h.yml:5", "unknown key 'host'"),
    ("h.yml", "all:\n  hosts: [w1, w2]\n", "h.yml:2", "must be a mapping"),
    ("h.yml", "all:\n  hosts:\n    w1: {\n", "h.yml:", "invalid YAML"),
    ("group_vars/win.yml", "ok: 1\nansible_connection: winrm\n", "win.yml:2", "SSH only"),
])
def test_what_reops_cannot_honour_is_one_line_with_file_and_line(
        tmp_path: Path, name: str, text: str, where: str, says: str) -> None:
    inv = "h.yml" if name.endswith(".yml") and "/" not in name else "h.ini"
    if "/" in name:
        write(tmp_path, "h.ini", "[win]\nw1\n")
    write(tmp_path, name, text)
    with pytest.raises(InventoryError) as e:
        inventory(tmp_path / inv)
    message = str(e.value)
    assert where in message and says in message and "\n" not in message, message


def test_cli_reads_ansible_inventory_and_names_the_line_on_error(tmp_path: Path) -> None:
    p = reops("hosts", "-i", str(DATA / "docs_ini" / "hosts.ini"), "group:raleigh", "-o", "names")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["host2", "host3"]
    bad = write(tmp_path, "hosts.ini", "[web]\nw1 ansible_connection=winrm\n")
    p = reops("hosts", "-i", str(bad))
    assert p.returncode == 2
    assert f"{bad}:2:" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_exec_over_ssh_from_an_ansible_inventory(lab: LabInfo, tmp_path: Path) -> None:
    """A real run: an INI with ranges, :vars and group_vars/ reaches the lab's sshd hosts."""
    web = [n for n in lab.hosts if n.startswith("web")][:3]
    lines = ["[web]"] + [f"{n} ansible_host={lab.address(n)}" for n in web]
    lines += ["", "[web:vars]", f"ansible_port={lab.port}", "", "[fleet:children]", "web"]
    write(tmp_path, "hosts.ini", "\n".join(lines) + "\n")
    write(tmp_path, "group_vars/all.yml",
          f"ansible_user: {lab.user}\nansible_ssh_private_key_file: {lab.key}\n")
    p = reops("exec", "-i", "hosts.ini", "--known-hosts", str(lab.known_hosts), "group:fleet",
              "-o", "json", "--", "echo", "hi", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert sorted(r["host"] for r in doc["successful"]) == sorted(web)
    assert {r["out"].strip() for r in doc["successful"]} == {"hi"}


def test_a_file_without_suffix_is_ansible_ini_unless_it_is_toml(tmp_path: Path) -> None:
    """Ansible's usual `hosts` file has no suffix; a TOML inventory without one still loads."""
    write(tmp_path, "hosts", "[web]\nweb[1:2] ansible_port=2201\n")
    inv = inventory(tmp_path / "hosts")
    assert inv.select("group:web").names == ["web1", "web2"] and inv["web2"].port == 2201
    write(tmp_path, "toml", '[hosts.web1]\naddress = "127.0.0.9"\n')
    assert inventory(tmp_path / "toml")["web1"].address == "127.0.0.9"


@pytest.mark.parametrize("args", [
    "-o ProxyJump=bastion",
    "-J bastion",
    '-o ProxyCommand="ssh -W %h:%p -q bastion"',
])
def test_bastion_from_ansible_ssh_args_is_really_used(bastion_lab: LabInfo, tmp_path: Path,
                                                      args: str) -> None:
    """Targets live in a namespace only the bastion reaches: a run succeeds only by jumping."""
    targets = [n for n in bastion_lab.hosts if n != "bastion"]
    common = (f"ansible_port={bastion_lab.port} ansible_user={bastion_lab.user} "
              f"ansible_ssh_private_key_file={bastion_lab.key}")
    lines = ["[bastions]", f"bastion ansible_host={bastion_lab.address('bastion')} {common}",
             "", "[targets]"]
    lines += [f"{n} ansible_host={bastion_lab.address(n)} {common}" for n in targets]
    lines += ["", "[targets:vars]", f"ansible_ssh_common_args='{args}'"]
    write(tmp_path, "hosts.ini", "\n".join(lines) + "\n")
    inv = inventory(tmp_path / "hosts.ini")
    assert [j.name for j in inv[targets[0]].jump or ()] == ["bastion"]
    assert inv["bastion"].jump is None
    p = reops("exec", "-i", "hosts.ini", "--known-hosts", str(bastion_lab.known_hosts),
              "group:targets", "-o", "json", "--", "hostname", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(r["host"] for r in json.loads(p.stdout)["successful"]) == sorted(targets)
    no_jump = write(tmp_path, "direct.ini", "\n".join(lines[:-1]) + "\n")
    p = reops("exec", "-i", str(no_jump), "--known-hosts", str(bastion_lab.known_hosts),
              "--connect-timeout", "3", targets[0], "--", "true", cwd=tmp_path)
    assert p.returncode == 1  # without the jump the target is out of reach


def test_a_proxycommand_that_is_not_a_jump_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "h.ini", "[web]\nw1\n\n[web:vars]\n"
          "ansible_ssh_common_args='-o ProxyCommand=\"nc -X 5 -x proxy:1080 %h %p\"'\n")
    with pytest.raises(InventoryError, match=r"h\.ini:5: host 'w1': ProxyCommand .* ProxyJump"):
        inventory(tmp_path / "h.ini")


def test_implicit_address_and_port_leave_room_for_ssh_config(tmp_path: Path) -> None:
    write(tmp_path, "h.ini", "[web]\nw1\nw2 ansible_host=10.0.0.2 ansible_port=2200\n")
    inv = inventory(tmp_path / "h.ini")
    assert inv["w1"].implicit == {"address", "port"} and inv["w2"].implicit == frozenset()

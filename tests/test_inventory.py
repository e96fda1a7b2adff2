"""Inventory loading: precedence, paths, and one exact `file:line: where: what` per mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reops.core.inventory import Inventory, InventoryError, inventory, loads
from reops.core.model import Host, Hosts
from reops.core.selector import SelectorError

EXAMPLE = """\
[defaults]            # applies to every host unless overridden
user = "deploy"
port = 22
vars = { env = "prod", tier = "base" }

[groups.web]
vars = { http_port = 8080, tier = "web" }
user = "www"

[groups.edge]
port = 2222
vars = { http_port = 80, tier = "edge" }

[hosts.web1]
address = "10.0.0.11"
groups = ["web", "edge"]
tags = { dc = "ams", role = "frontend" }

[hosts.web2]
groups = ["edge", "web"]
tags = { dc = "fra" }
vars = { tier = "special" }

[hosts.db1]
address = "10.0.0.21"
user = "postgres"
key = "~/.ssh/db_ed25519"
known_hosts = "keys/known_hosts"
groups = ["db"]
port = 5022
"""


def write(tmp_path: Path, text: str, name: str = "inventory.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(write(tmp_path, EXAMPLE))


def test_hosts_in_file_order(inv: Inventory) -> None:
    assert isinstance(inv.hosts, Hosts)
    assert inv.hosts.names == ["web1", "web2", "db1"]
    assert [h.name for h in inv] == ["web1", "web2", "db1"]
    assert len(inv) == 3
    assert inv["db1"].address == "10.0.0.21"


def test_address_defaults_to_name(inv: Inventory) -> None:
    assert inv["web2"].address == "web2"


def test_precedence_host_over_groups_over_defaults(inv: Inventory) -> None:
    web1, web2, db1 = inv["web1"], inv["web2"], inv["db1"]
    # web1 lists web first: web's user and vars win over edge's; port only edge sets
    assert (web1.user, web1.port) == ("www", 2222)
    assert web1.vars == {"env": "prod", "tier": "web", "http_port": 8080}
    # web2 lists edge first: edge's http_port wins; the host's own tier beats every group
    assert (web2.user, web2.port) == ("www", 2222)
    assert web2.vars == {"env": "prod", "tier": "special", "http_port": 80}
    # db1 is in an implicit group and sets its own user and port
    assert (db1.user, db1.port) == ("postgres", 5022)
    assert db1.vars == {"env": "prod", "tier": "base"}


def test_tags_and_groups(inv: Inventory) -> None:
    assert inv["web1"].tags == {"dc": "ams", "role": "frontend"}
    assert inv["web1"].groups == ("web", "edge")
    assert inv["web2"].tags == {"dc": "fra"}


def test_key_paths_expand_home_and_resolve_against_the_file(inv: Inventory, tmp_path: Path) -> None:
    db1 = inv["db1"]
    assert db1.key == os.path.expanduser("~/.ssh/db_ed25519")
    assert db1.known_hosts == str((tmp_path / "keys/known_hosts").resolve())
    assert inv["web1"].key is None and inv["web1"].known_hosts is None


def test_relative_key_in_defaults_resolves_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "lab"
    sub.mkdir()
    inv = inventory(write(sub, '[defaults]\nkey = "id_ed25519"\n[hosts.a]\n'))
    assert inv["a"].key == str(sub.resolve() / "id_ed25519")


def test_groups_include_implicit_ones_with_members(inv: Inventory) -> None:
    assert list(inv.groups) == ["web", "edge", "db"]
    assert inv.groups["web"].hosts == ("web1", "web2")
    assert inv.groups["web"].vars == {"http_port": 8080, "tier": "web"}
    assert inv.groups["db"].defined is False and inv.groups["db"].hosts == ("db1",)


def test_select(inv: Inventory) -> None:
    assert inv.select("group:web & !web2").names == ["web1"]
    assert inv.select("db1, web*").names == ["web1", "web2", "db1"]  # inventory order
    assert inv.select("tag:dc=fra").names == ["web2"]
    assert inv.select("group:web & group:db").names == []  # valid, just empty
    with pytest.raises(SelectorError, match=r"no host named 'web3' \(did you mean"):
        inv.select("web3")


def test_empty_file_is_an_empty_inventory(tmp_path: Path) -> None:
    inv = inventory(write(tmp_path, "# nothing yet\n"))
    assert len(inv) == 0 and inv.groups == {}


def test_dotted_keys_and_subtables(tmp_path: Path) -> None:
    text = 'hosts.a.port = 2200\n[hosts.b]\naddress = "h"\n[hosts.b.tags]\nrole = "x"\n'
    inv = inventory(write(tmp_path, text))
    assert inv["a"].port == 2200
    assert inv["b"].tags == {"role": "x"}


def test_duplicate_groups_are_collapsed(tmp_path: Path) -> None:
    inv = inventory(write(tmp_path, '[hosts.a]\ngroups = ["x", "y", "x"]\n'))
    assert inv["a"].groups == ("x", "y")


def test_hosts_are_model_hosts(inv: Inventory) -> None:
    assert all(isinstance(h, Host) for h in inv)


# Each bad inventory and the exact message it must give. `{f}` is the file's path.
BAD: list[tuple[str, str, str]] = [
    (
        "port not an integer",
        '[hosts.web1]\naddress = "a"\n\n[hosts.web3]\naddress = "b"\nport = "abc"\n',
        "{f}:6: host 'web3': port must be an integer, got 'abc'",
    ),
    (
        "port is a bool",
        "[hosts.web1]\nport = true\n",
        "{f}:2: host 'web1': port must be an integer, got true",
    ),
    (
        "port out of range",
        "[hosts.web1]\nport = 70000\n",
        "{f}:2: host 'web1': port must be between 1 and 65535, got 70000",
    ),
    (
        "port zero in defaults",
        "[defaults]\nuser = 'x'\nport = 0\n",
        "{f}:3: defaults: port must be between 1 and 65535, got 0",
    ),
    (
        "port bad in a group",
        "[groups.web]\nport = 1.5\n",
        "{f}:2: group 'web': port must be an integer, got 1.5",
    ),
    (
        "dotted key outside a table",
        'hosts.a.port = "x"\n',
        "{f}:1: host 'a': port must be an integer, got 'x'",
    ),
    (
        "typo in host field",
        "[hosts.web1]\nadress = '10.0.0.1'\n",
        "{f}:2: host 'web1': unknown field 'adress' (did you mean 'address'?)",
    ),
    (
        "unknown host field, nothing close",
        "[hosts.web1]\ncolour = 'red'\n",
        "{f}:2: host 'web1': unknown field 'colour' "
        "(valid fields: address, port, user, key, known_hosts, jump, groups, tags, vars, "
        "agent_key)",
    ),
    (
        "host-only field in a group",
        "[groups.web]\naddress = 'x'\n",
        "{f}:2: group 'web': unknown field 'address' "
        "(valid fields: user, port, key, known_hosts, jump, vars)",
    ),
    (
        "typo in defaults",
        "[defaults]\nusr = 'x'\n",
        "{f}:2: defaults: unknown field 'usr' (did you mean 'user'?)",
    ),
    (
        "unknown section",
        "[defaults]\nuser = 'x'\n\n[host.web1]\n",
        "{f}:4: unknown section 'host' (did you mean 'hosts'?)",
    ),
    (
        "groups not a list",
        "[hosts.web1]\ngroups = 'web'\n",
        "{f}:2: host 'web1': groups must be a list of group names, got 'web' "
        '(write groups = ["web"])',
    ),
    (
        "groups a table",
        "[hosts.web1]\ngroups = { web = 1 }\n",
        "{f}:2: host 'web1': groups must be a list of group names, got a table",
    ),
    (
        "group entry not a string",
        "[hosts.web1]\ngroups = ['web', 3]\n",
        "{f}:2: host 'web1': groups[1] must be a group name, got 3",
    ),
    (
        "group name with a selector character",
        "[hosts.web1]\ngroups = ['web,db']\n",
        "{f}:2: host 'web1': group name 'web,db' cannot be used in selectors; "
        "avoid spaces and , & ! ( ) : * ? [ ] =",
    ),
    (
        "host name with a space",
        '[hosts."web 1"]\n',
        "{f}:1: host 'web 1': name cannot be used in selectors; "
        "avoid spaces and , & ! ( ) : * ? [ ] =",
    ),
    (
        "host named all",
        "[hosts.web1]\n[hosts.all]\n",
        "{f}:2: host 'all': 'all' is reserved: the selector 'all' means every host",
    ),
    (
        "tag value not a string",
        "[hosts.web1]\naddress = 'a'\ntags = { rack = 4 }\n",
        "{f}:3: host 'web1': tags.rack must be a string, got 4 (quote it)",
    ),
    (
        "tag in a subtable",
        "[hosts.web1]\n[hosts.web1.tags]\ndc = 'ams'\nrack = 4\n",
        "{f}:4: host 'web1': tags.rack must be a string, got 4 (quote it)",
    ),
    (
        "tags not a table",
        "[hosts.web1]\ntags = ['a']\n",
        "{f}:2: host 'web1': tags must be a table, got a list",
    ),
    (
        "vars not a table",
        "[defaults]\nvars = 3\n",
        "{f}:2: defaults: vars must be a table, got 3",
    ),
    (
        "empty address",
        "[hosts.web1]\naddress = ''\n",
        "{f}:2: host 'web1': address must be a non-empty string, got ''",
    ),
    (
        "user not a string",
        "[hosts.web1]\nuser = 5\n",
        "{f}:2: host 'web1': user must be a string, got 5",
    ),
    (
        "key not a string",
        "[hosts.web1]\nkey = 5\n",
        "{f}:2: host 'web1': key must be a path (a string), got 5",
    ),
    (
        "host not a table",
        "[hosts]\nweb1 = 'x'\n",
        "{f}:2: host 'web1': must be a table, got 'x'",
    ),
    (
        "hosts not a table",
        "hosts = 3\n",
        "{f}:1: hosts: must be a table, got 3",
    ),
    (
        "quoted header and key",
        '[hosts."web-1"]\n"port" = "x"\n',
        "{f}:2: host 'web-1': port must be an integer, got 'x'",
    ),
    (
        "field in a multi-line string is not mistaken for a key",
        '[hosts.a]\nvars = { motd = """\nport = 1\n""" }\nport = "x"\n',
        "{f}:5: host 'a': port must be an integer, got 'x'",
    ),
    (
        "TOML syntax error",
        "[hosts.web1]\nport = \n",
        "{f}:2: invalid TOML: Invalid value (column 8)",
    ),
    (
        "TOML error at end of file",
        "[hosts.web1]\nuser = 'x",
        '{f}:2: invalid TOML: Expected "\'" (at end of file)',
    ),
    (
        "duplicate table",
        "[hosts.web1]\n[hosts.web1]\n",
        "{f}:2: invalid TOML: Cannot declare ('hosts', 'web1') twice (column 12)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inventory(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as e:
        inventory(path)
    assert str(e.value) == expected.format(f=path)
    assert "\n" not in str(e.value)


def test_error_is_a_value_error() -> None:
    assert issubclass(InventoryError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(InventoryError, match=r"nope\.toml: inventory file not found$"):
        inventory(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory"):
        inventory(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "inv.toml"
    path.write_bytes(b"[hosts.a]\nuser = '\xff'\n")
    with pytest.raises(InventoryError) as e:
        inventory(path)
    assert str(e.value) == f"{path}:2: inventory is not valid UTF-8"


def test_loads_names_the_source_in_errors() -> None:
    with pytest.raises(InventoryError) as e:
        loads("[hosts.a]\nport = -1\n", "lab/inv.toml")
    assert str(e.value) == "lab/inv.toml:2: host 'a': port must be between 1 and 65535, got -1"

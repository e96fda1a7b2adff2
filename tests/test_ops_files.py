"""File ops: generated commands, and the scripts run for real (dash and bash) in a tmp dir.

Every write op is run twice to prove idempotence (`changed` True, then False). Running the
scripts with `sh -c` here is exactly what the SSH source does on a host.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reops.core.model import Host, Result
from reops.ops import files
from reops.ops.base import Op
from reops.ops.text import EX_DATAERR, EX_NOINPUT

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="web1", address="10.0.0.11", vars={"port": 8080, "name": "shop"})
SHELLS = ["dash", "bash"]


def run_local(op: Op, host: Host = HOST, shell: str = "sh",
              env: dict[str, str] | None = None) -> Result:
    """Run `op` as the SSH source would, but through a local shell."""
    p = subprocess.run([shell, "-c", op.command_for(host)], capture_output=True, text=True,
                       env=env, timeout=60)
    ok = p.returncode in op.ok_codes
    return Result(host=host.name, op=op.name, status="ok" if ok else "failed",
                  code=p.returncode, out=p.stdout, err=p.stderr, transport="local",
                  data=op.parse(p.stdout) if ok and op.parse else None,
                  changed=op.changed(p.returncode, p.stdout) if ok and op.changed else None)


def twice(op: Op, shell: str = "sh") -> tuple[Result, Result]:
    first, second = run_local(op, shell=shell), run_local(op, shell=shell)
    assert first.ok, first.err
    assert second.ok, second.err
    return first, second


# --- command generation (what --dry-run prints) ---

@pytest.mark.parametrize(("op", "expected"), [
    (files.grep("listen", "/etc/nginx/nginx.conf"),
     "grep -nHE -e listen -- /etc/nginx/nginx.conf"),
    (files.grep("a b", "/etc", recursive=True, ignore_case=True, fixed=True),
     "grep -nHriF -e 'a b' -- /etc"),
    (files.grep("x", "/root/secret", sudo=True),
     "sudo -n -- sh -c 'grep -nHE -e x -- /root/secret'"),
    (files.grep("x", "f", become_user="app"),
     "sudo -n -u app -- sh -c 'grep -nHE -e x -- f'"),
    (files.mkdir("/srv/app"),
     'p=/srv/app\nif [ -d "$p" ]; then echo "::reops:: unchanged"; '
     'else mkdir -p -- "$p" && echo "::reops:: changed" || exit; fi'),
    (files.sync("site", "/srv/www"),
     "if command -v rsync >/dev/null 2>&1; then echo rsync; else echo sftp; fi"),
])
def test_command(op: Op, expected: str) -> None:
    assert op.command_for(HOST) == expected


@pytest.mark.parametrize(("op", "lines"), [
    (files.mkdir("/srv/app", mode=0o2775, owner="www-data", group="www"), [
        '[ "$(stat -c %a -- "$p")" = 2775 ] || { chmod 2775 -- "$p" && '
        'echo "::reops:: changed"; } || exit',
        '[ "$(stat -c %U -- "$p")" = www-data ] || { chown www-data -- "$p" && '
        'echo "::reops:: changed"; } || exit',
    ]),
    (files.rm("/tmp/a b", "/tmp/c", recursive=True), [
        "for p in '/tmp/a b' /tmp/c; do",
        '  if [ -e "$p" ] || [ -L "$p" ]; then found=1; rm -rf -- "$p" || exit; fi',
    ]),
    (files.cp("/etc/hosts", "/tmp/"), ["src=/etc/hosts; dst=/tmp/",
                                        'else cp -p -- "$src" "$dst" && '
                                        'echo "::reops:: changed"; fi']),
    (files.extract("/tmp/app.tar.gz", "/opt/app", strip_components=1, creates="/opt/app/bin"),
     ["if [ -e /opt/app/bin ]; then echo \"::reops:: unchanged\"; exit 0; fi",
      'tar -xvf "$a" -C "$d" --strip-components=1 || exit']),
    (files.line_in_file("/etc/ssh/sshd_config", "PermitRootLogin no",
                        regex="^#?PermitRootLogin"),
     ["f=/etc/ssh/sshd_config", "line='PermitRootLogin no'", "re='^#?PermitRootLogin'"]),
])
def test_command_lines(op: Op, lines: list[str]) -> None:
    cmd = op.command_for(HOST)
    for line in lines:
        assert line in cmd.splitlines()


@pytest.mark.parametrize("call", [
    lambda: files.rm(),
    lambda: files.grep("x"),
    lambda: files.line_in_file("/f", "two\nlines"),
])
def test_bad_arguments_raise_before_anything_runs(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


# --- real runs ---

@pytest.mark.parametrize("shell", SHELLS)
def test_mkdir_is_idempotent_and_fixes_mode(tmp_path: Path, shell: str) -> None:
    d = tmp_path / "a" / "b"
    first, second = twice(files.mkdir(str(d), mode=0o750), shell)
    assert (first.changed, second.changed) == (True, False)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    d.chmod(0o755)
    assert run_local(files.mkdir(str(d), mode=0o750), shell=shell).changed is True
    assert stat.S_IMODE(d.stat().st_mode) == 0o750


@pytest.mark.parametrize("shell", SHELLS)
def test_rm(tmp_path: Path, shell: str) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_text("y")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    refused = run_local(files.rm(str(tmp_path / "d")), shell=shell)
    assert refused.code == 1 and "Is a directory" in refused.err
    op = files.rm(str(tmp_path / "f"), str(tmp_path / "d"), str(tmp_path / "dangling"),
                  recursive=True)
    first, second = twice(op, shell)
    assert (first.changed, second.changed) == (True, False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS)
def test_cp_into_directory_and_compare(tmp_path: Path, shell: str) -> None:
    src = tmp_path / "src.conf"
    src.write_text("a=1\n")
    (tmp_path / "dest").mkdir()
    first, second = twice(files.cp(str(src), str(tmp_path / "dest")), shell)
    assert (first.changed, second.changed) == (True, False)
    assert (tmp_path / "dest" / "src.conf").read_text() == "a=1\n"
    missing = run_local(files.cp(str(tmp_path / "nope"), str(tmp_path / "dest")), shell=shell)
    assert missing.code == EX_NOINPUT and "reops: no such file:" in missing.err


def test_grep_matches_no_match_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("listen 80;\nserver_name x;\nlisten 443 ssl;\n")
    (tmp_path / "b:c.conf").write_text("LISTEN 8080;\n")
    found = run_local(files.grep("listen", str(tmp_path), recursive=True, ignore_case=True))
    assert found.ok
    rows = sorted((m.path.rsplit("/", 1)[1], m.line, m.text) for m in found.data)
    assert rows == [("a.conf", 1, "listen 80;"), ("a.conf", 3, "listen 443 ssl;"),
                    ("b:c.conf", 1, "LISTEN 8080;")]
    none = run_local(files.grep("nothing", str(tmp_path / "a.conf")))
    assert none.ok and none.code == 1 and none.data == []
    missing = run_local(files.grep("x", str(tmp_path / "missing")))
    assert missing.status == "failed" and missing.code == 2
    assert "No such file or directory" in missing.err


@pytest.mark.parametrize("shell", SHELLS)
def test_extract_with_creates(tmp_path: Path, shell: str) -> None:
    tree = tmp_path / "tree" / "app"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text("#!/bin/sh\n")
    archive = tmp_path / "app.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="app")
    dest = tmp_path / "opt"
    op = files.extract(str(archive), str(dest), strip_components=1, creates=str(dest / "bin"))
    first, second = twice(op, shell)
    assert (first.changed, second.changed) == (True, False)
    assert (dest / "bin" / "run").read_text() == "#!/bin/sh\n"
    assert "app/bin/run" in first.data and second.data == []
    gone = run_local(files.extract(str(tmp_path / "nope.tgz"), str(dest)), shell=shell)
    assert gone.code == EX_NOINPUT and "archive not found" in gone.err


@pytest.mark.parametrize("shell", SHELLS)
def test_line_in_file_replace_append_remove(tmp_path: Path, shell: str) -> None:
    f = tmp_path / "sshd_config"
    f.write_text("Port 22\n#PermitRootLogin yes\nUsePAM yes")  # no final newline
    f.chmod(0o600)
    inode = f.stat().st_ino

    def ensure(line: str, **kw: object) -> tuple[bool | None, bool | None]:
        a, b = twice(files.line_in_file(str(f), line, **kw), shell)  # type: ignore[arg-type]
        return a.changed, b.changed

    assert ensure("PermitRootLogin no", regex="^#?PermitRootLogin") == (True, False)
    assert ensure("X11Forwarding no") == (True, False)
    assert ensure("UsePAM yes", present=False) == (True, False)
    assert ensure("ignored", regex="^Port ", present=False) == (True, False)
    assert f.read_text() == "PermitRootLogin no\nX11Forwarding no\n"
    assert f.stat().st_ino == inode and stat.S_IMODE(f.stat().st_mode) == 0o600


def test_line_in_file_special_characters(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text("")
    line = r"""PS1='\u@\h $(date) "x" & | \\ %s'"""
    a, b = twice(files.line_in_file(str(f), line))
    assert (a.changed, b.changed) == (True, False)
    assert f.read_text() == line + "\n"


def test_line_in_file_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "new.conf"
    r = run_local(files.line_in_file(str(f), "a=1"))
    assert r.code == EX_NOINPUT and "no such file" in r.err and "create=True" in r.err
    a, b = twice(files.line_in_file(str(f), "a=1", create=True))
    assert (a.changed, b.changed) == (True, False) and f.read_text() == "a=1\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_template_renders_host_vars_and_writes_only_on_change(tmp_path: Path,
                                                              shell: str) -> None:
    src = tmp_path / "site.conf.tmpl"
    src.write_text("server $host { listen $port; name $name; root $$document_root; }\n")
    dest = tmp_path / "site.conf"
    op = files.template(str(src), str(dest), vars={"name": "override"}, mode=0o640)
    first, second = twice(op, shell)
    assert (first.changed, second.changed) == (True, False)
    assert dest.read_text() == ("server web1 { listen 8080; name override; "
                                "root $document_root; }\n")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    dest.write_text("edited by hand\n")
    assert run_local(op, shell=shell).changed is True
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


def test_template_format_engine_and_missing_variable(tmp_path: Path) -> None:
    src = tmp_path / "t"
    src.write_text("port={port} addr={address}\n")
    dest = tmp_path / "out"
    assert run_local(files.template(str(src), str(dest), engine="format")).changed is True
    assert dest.read_text() == "port=8080 addr=10.0.0.11\n"
    src.write_text("x=$nope\n")
    r = run_local(files.template(str(src), str(tmp_path / "out2")))
    assert r.code == EX_DATAERR and "cannot render" in r.err and "nope" in r.err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("data", [
    b"no final newline",
    b"\x00\x01binary\xff\n",
    b"REOPS_EOF\nlooks like the delimiter\n",
    "unicode ✓ line\n".encode(),
    b"", b"\n", b"two trailing newlines\n\n", b"\n\nblank lines first\n",
])
def test_write_script_round_trips_any_bytes(tmp_path: Path, data: bytes) -> None:
    dest = tmp_path / "f"
    cmd = files.write_script(str(dest), data)
    for expected in (True, False):
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert ("::reops:: changed" in p.stdout) is expected
    assert dest.read_bytes() == data


def test_write_script_refuses_more_than_one_command_can_carry(tmp_path: Path) -> None:
    cmd = files.write_script(str(tmp_path / "big"), b"x" * (files.MAX_INLINE_BYTES + 1) + b"\n")
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert p.returncode == EX_DATAERR and "use upload()" in p.stderr


def test_template_text_is_readable_in_dry_run(tmp_path: Path) -> None:
    src = tmp_path / "motd"
    src.write_text("Welcome to $host\n")
    cmd = files.template(str(src), "/etc/motd").command_for(HOST)
    assert "cat > \"$tmp\" <<'REOPS_EOF' || exit\nWelcome to web1\nREOPS_EOF\n" in cmd


@pytest.fixture
def sudo_env(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `sudo` is a stand-in: `-u USER` switches with runuser, else runs as is."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sudo").write_text(
        '#!/bin/sh\nuser=root\nwhile [ "$1" != "--" ]; do\n'
        '  [ "$1" = "-u" ] && { user=$2; shift; }\n  shift\ndone\nshift\n'
        'exec runuser -u "$user" -- "$@"\n')
    (fake / "sudo").chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}


def test_permission_denied_as_another_user_is_a_clear_failure(tmp_path: Path,
                                                               sudo_env: dict[str, str]) -> None:
    """become_user through the stand-in `sudo` on a root-only directory."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    r = run_local(files.mkdir(str(private / "x"), become_user="nobody"), env=sudo_env)
    assert r.status == "failed" and r.code == 1
    assert "Permission denied" in r.err
    ok = run_local(files.mkdir(str(private / "x"), sudo=True), env=sudo_env)
    assert ok.ok and ok.changed is True


def test_sudo_wrapping_keeps_heredocs_and_quotes_intact(tmp_path: Path,
                                                        sudo_env: dict[str, str]) -> None:
    src = tmp_path / "t"
    src.write_text("it's \"$host\" \\ `x` $$HOME\n")
    dest = tmp_path / "out"
    op = files.template(str(src), str(dest), sudo=True)
    assert run_local(op, env=sudo_env).changed is True
    assert run_local(op, env=sudo_env).changed is False
    assert dest.read_text() == 'it\'s "web1" \\ `x` $HOME\n'
    line = files.line_in_file(str(dest), "a='b' \"c\"", sudo=True)
    assert run_local(line, env=sudo_env).changed is True
    assert dest.read_text().endswith("a='b' \"c\"\n")


# --- sync: the source's half ---

def test_parse_rsync_real_itemized_output() -> None:
    changes = files.parse_rsync((DATA / "real-debian12-rsync-itemize.txt").read_text())
    assert [(c.change, c.path) for c in changes] == [
        ("*deleting", "stale"), (">f+++++++++", "x"), ("cd+++++++++", "sub/"),
        (">f+++++++++", "sub/y"), (">f.s.......", "x"), (".f...p.....", "sub/y")]
    assert files.parse_rsync(".d..t...... ./\n.f          unchanged\n") == [
        files.RsyncChange(change=".d..t......", path="./")]


def test_rsync_argv(tmp_path: Path) -> None:
    op = files.sync(str(tmp_path), "/srv/www", delete=True, exclude=[".git", "*.pyc"],
                    sudo=True)
    assert op.kind == "sync" and op.local == str(tmp_path) and op.remote == "/srv/www"
    host = Host(name="h", address="fd00::5", port=2222, user="deploy", key="/k/id",
                known_hosts="/k/known")
    assert files.rsync_argv(op, host, ssh_options=["-o", "ConnectTimeout=10"]) == [
        "rsync", "-a", "--itemize-changes", "-e",
        "ssh -p 2222 -o BatchMode=yes -i /k/id -o UserKnownHostsFile=/k/known "
        "-o ConnectTimeout=10",
        "--delete", "--exclude", ".git", "--exclude", "*.pyc",
        "--rsync-path", "sudo -n rsync", "--", f"{tmp_path}/", "deploy@[fd00::5]:/srv/www"]
    assert op.changed is not None and op.changed(0, ">f+++++++++ x\n") is True
    assert op.changed(0, "") is False


def test_rsync_argv_really_syncs_over_local_shell(tmp_path: Path) -> None:
    """rsync_argv with `-e` swapped for a local transport: contents land, itemized parse."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("1\n")
    dst = tmp_path / "dst"
    op = files.sync(str(src), str(dst))
    argv = files.rsync_argv(op, Host(name="h", address="localhost"))
    local = [*[a for a in argv if a not in ("-e", argv[4])][:-1], f"{dst}/"]
    p = subprocess.run(local, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (dst / "sub" / "f").read_text() == "1\n"
    assert op.parse is not None
    assert {c.path for c in op.parse(p.stdout)} >= {"sub/", "sub/f"}
    again = subprocess.run(local, capture_output=True, text=True, timeout=60)
    assert op.parse(again.stdout) == []


# --- properties: any line, any bytes survive the shell quoting ---

_line = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\x00"),
                max_size=40)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=5), line=_line)
def test_line_in_file_property(tmp_path: Path, lines: list[str], line: str) -> None:
    f = tmp_path / "prop"
    f.write_text("".join(x + "\n" for x in lines))
    a, b = twice(files.line_in_file(str(f), line))
    assert a.changed is (line not in lines) and b.changed is False
    assert line in f.read_text().split("\n")
    a, b = twice(files.line_in_file(str(f), line, present=False))
    assert a.changed is True and b.changed is False
    assert line not in f.read_text().split("\n")[:-1]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_write_script_property(tmp_path: Path, data: bytes) -> None:
    dest = tmp_path / "bytes"
    cmd = files.write_script(str(dest), data)
    for _ in range(2):
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
    assert dest.read_bytes() == data

"""`--check` / `check=True` on the real lab (issue 10, item 8): each host says, with read-only
commands, whether an op WOULD change it — a unified diff for text files, real `dpkg-query`
for packages — and nothing on the host changes (content, inode and nanosecond mtime are
compared before and after). Exit codes like diff(1): 0 no change, 1 changes, 2 errors.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from reops import run
from reops.core.inventory import inventory
from reops.core.model import Host, Outcome
from reops.core.secrets import Secret
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.sinks.table import to_table
from reops.streams.operators import then
from reops.streams.steps import (
    check,
    cp,
    download,
    exec_,
    extract,
    line_in_file,
    ls,
    mkdir,
    pkg,
    rm,
    service,
    sync,
    template,
    upload,
)

FAST = Settings(connect_timeout=10.0, command_timeout=60.0)


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=120)


def host(lab: LabInfo, name: str = "web1") -> Host:
    return lab.as_hosts()[name]


def sh(h: Host, command: str) -> str:
    """Run `command` for real on `h` (test setup and inspection), its stdout."""
    out = run(exec_(h, command, settings=FAST))
    assert out.ok, out.failed
    return out[h.name].out


@pytest.fixture
def workdir(lab: LabInfo) -> str:
    """A fresh directory ON web1, made by web1 itself (its /tmp may be its own)."""
    return sh(host(lab), "mktemp -d /tmp/reops-check.XXXXXX").strip()


def fingerprint(h: Host, *paths: str) -> str:
    """Content hash, inode, mode and nanosecond mtime of `paths` on `h` (absent: noted)."""
    return sh(h, " ; ".join(
        f"if [ -e {p} ]; then stat -c '%n %i %a %y' {p}; sha256sum < {p}; "
        f"else echo 'absent {p}'; fi" for p in paths))


def check_of(out: Outcome, name: str) -> dict[str, object]:
    data = out[name].data
    assert isinstance(data, dict), out[name]
    return data["check"]


def test_template_check_gives_a_unified_diff_and_changes_nothing(
        lab: LabInfo, workdir: str, tmp_path: Path) -> None:
    h = host(lab)
    conf = f"{workdir}/app.conf"
    sh(h, f"printf 'port=80\\nname=web1\\nmode=fast\\n' > {conf}")
    src = tmp_path / "app.conf.tmpl"
    src.write_text("port=$port\nname=$host\nmode=fast\n")
    before = fingerprint(h, conf)

    out = run(template(h, str(src), conf, vars={"port": "8080"}, settings=FAST, check=True))
    found = check_of(out, "web1")
    assert found["changes"] is True and out["web1"].changed is True
    diff = str(found["diff"])
    assert f"--- web1:{conf} (now)" in diff and f"+++ web1:{conf} (wanted)" in diff
    assert "\n-port=80\n+port=8080\n" in diff and " name=web1" in diff
    assert out["web1"].out == diff  # what every sink prints
    assert out.check_exit_code == 1 and out.run is not None and out.run.check
    assert fingerprint(h, conf) == before  # the check wrote nothing

    run(template(h, str(src), conf, vars={"port": "8080"}, settings=FAST))  # apply for real
    again = run(template(h, str(src), conf, vars={"port": "8080"}, settings=FAST, check=True))
    assert check_of(again, "web1") == {"changes": False, "diff": ""}
    assert again.check_exit_code == 0


def test_no_diff_sends_no_content_off_the_host(lab: LabInfo, workdir: str,
                                               tmp_path: Path) -> None:
    h = host(lab)
    conf = f"{workdir}/secret.conf"
    sh(h, f"printf 'password=hunter2-old\\n' > {conf}")
    src = tmp_path / "secret.tmpl"
    src.write_text("password=$pw\n")
    out = run(template(h, str(src), conf, vars={"pw": "s3cr3t-new"}, settings=FAST,
                       check=True, diff=False))
    text = out.to_json().decode()
    assert check_of(out, "web1")["changes"] is True
    assert "diff hidden" in str(check_of(out, "web1")["diff"])
    assert "hunter2" not in text and "s3cr3t" not in text


def test_missing_file_would_be_created_with_its_mode(lab: LabInfo, workdir: str,
                                                     tmp_path: Path) -> None:
    h = host(lab)
    src = tmp_path / "new.tmpl"
    src.write_text("hello $host\n")
    new = f"{workdir}/new.conf"
    out = run(template(h, str(src), new, mode=0o600, settings=FAST, check=True))
    diff = str(check_of(out, "web1")["diff"])
    assert f"would create web1:{new}" in diff and "+hello web1" in diff
    assert "mode - → 600" in diff
    assert fingerprint(h, new) == f"absent {new}\n"


def test_binary_files_differ_without_a_diff(lab: LabInfo, workdir: str,
                                            tmp_path: Path) -> None:
    h = host(lab)
    blob = f"{workdir}/blob.bin"
    sh(h, f"printf 'a\\000b' > {blob}")
    local = tmp_path / "blob.bin"
    local.write_bytes(b"a\0c")
    out = run(upload(h, str(local), blob, settings=FAST, check=True))
    assert check_of(out, "web1") == {
        "changes": True, "diff": f"binary web1:{blob} differs (3 → 3 bytes)"}


def test_line_in_file_rm_mkdir_checks_touch_nothing(lab: LabInfo, workdir: str) -> None:
    h = host(lab)
    f = f"{workdir}/hosts.txt"
    sh(h, f"printf 'a\\nb\\n' > {f}")
    before = fingerprint(h, f, f"{workdir}/sub")

    out = run(line_in_file(h, f, "c", settings=FAST, check=True))
    assert "\n a\n b\n+c" in str(check_of(out, "web1")["diff"])
    out = run(line_in_file(h, f, "B", regex="^b$", settings=FAST, check=True))
    assert "\n-b\n+B" in str(check_of(out, "web1")["diff"])
    out = run(line_in_file(h, f, "a", settings=FAST, check=True))
    assert check_of(out, "web1")["changes"] is False
    out = run(rm(h, f, f"{workdir}/nope", settings=FAST, check=True))
    assert check_of(out, "web1") == {"changes": True, "diff": f"would remove web1:{f}"}
    out = run(mkdir(h, f"{workdir}/sub", settings=FAST, check=True))
    assert f"would create directory web1:{workdir}/sub" in str(check_of(out, "web1")["diff"])
    out = run(mkdir(h, workdir, mode=0o700, settings=FAST, check=True))
    assert check_of(out, "web1")["changes"] is False  # mktemp -d made it 0700

    assert fingerprint(h, f, f"{workdir}/sub") == before


def test_tree_upload_and_sync_list_what_would_change(lab: LabInfo, workdir: str,
                                                     tmp_path: Path) -> None:
    h = host(lab)
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>new</h1>\n")
    (site / "css" / "a.css").write_text("a{}\n")
    sh(h, f"mkdir -p {workdir}/www && echo '<h1>old</h1>' > {workdir}/www/index.html"
          f" && echo old > {workdir}/www/stale.txt")
    out = run(sync(h, str(site), f"{workdir}/www", delete=True, settings=FAST, check=True))
    assert set(str(check_of(out, "web1")["diff"]).splitlines()) == {
        f"differs web1:{workdir}/www/index.html",
        f"would create web1:{workdir}/www/css/a.css",
        f"would delete web1:{workdir}/www/stale.txt"}
    out = run(upload(h, str(site), f"{workdir}/fresh", settings=FAST, check=True))
    assert "would create" in str(check_of(out, "web1")["diff"])
    assert sh(h, f"ls {workdir}/www; ls {workdir}/fresh 2>&1 || true").split() [:2] == [
        "index.html", "stale.txt"]


def test_exec_would_run_and_is_not_run(lab: LabInfo, workdir: str) -> None:
    h = host(lab)
    out = run(exec_(h, f"touch {workdir}/ran", settings=FAST, check=True))
    assert out["web1"].out == "exec: would run (cannot be checked)"
    assert check_of(out, "web1")["changes"] is True and out.check_exit_code == 1
    assert fingerprint(h, f"{workdir}/ran") == f"absent {workdir}/ran\n"
    # queries change nothing: they run, and report no change
    assert check_of(run(ls(h, workdir, settings=FAST, check=True)), "web1")["changes"] is False


def test_packages_are_checked_with_the_real_manager(lab: LabInfo) -> None:
    h = host(lab, "db1")
    version = sh(h, "dpkg-query -W -f='${Version}' dpkg").strip()
    out = run(pkg.install(h, "dpkg", "reops-no-such-package", settings=FAST, check=True))
    assert check_of(out, "db1") == {"changes": True, "diff": (
        f"dpkg {version} is installed\nwould install reops-no-such-package")}
    out = run(pkg.install(h, "dpkg", settings=FAST, check=True))
    assert check_of(out, "db1")["changes"] is False and out.check_exit_code == 0
    out = run(pkg.remove(h, "reops-no-such-package", settings=FAST, check=True))
    assert check_of(out, "db1")["changes"] is False
    out = run(pkg.remove(h, "dpkg", settings=FAST, check=True))
    assert check_of(out, "db1") == {"changes": True, "diff": f"would remove dpkg {version}"}


def test_a_host_that_cannot_answer_is_an_error(lab: LabInfo,
                                               dead_address: tuple[str, int]) -> None:
    h = host(lab, "db2")
    dead = msgspec.structs.replace(h, name="dead", address=dead_address[0],
                                   port=dead_address[1])
    out = run(pkg.install([h, dead], "dpkg", settings=FAST, check=True))
    assert out["dead"].status == "unreachable" and check_of(out, "db2")["changes"] is False
    assert out.check_exit_code == 2
    doc = json.loads(out.to_json())
    assert doc["check"]["db2"] == {"changes": False, "diff": ""}  # notes only with changes
    assert doc["check"]["dead"]["changes"] is None and doc["check"]["dead"]["error"]
    # a service that does not exist fails its check, as it would fail for real
    out = run(service.start(h, "reops-no-such-service", settings=FAST, check=True))
    assert not out.ok and out.check_exit_code == 2


def test_cli_check_exit_codes_json_and_no_change_on_the_host(
        lab: LabInfo, workdir: str, tmp_path: Path) -> None:
    h = host(lab)
    conf = f"{workdir}/cli.conf"
    sh(h, f"printf 'level=1\\n' > {conf}")
    src = tmp_path / "cli.tmpl"
    src.write_text("level=$level\n")
    before = fingerprint(h, conf)
    inv = str(lab.inventory)

    p = reops("files", "template", "-i", inv, "web1", str(src), conf, "--vars", "level=2",
              "--check")
    assert p.returncode == 1, p.stderr
    assert "-level=1" in p.stdout and "+level=2" in p.stdout
    assert re.search(r"^✔ web1 +files\.template \d+\.\d\ds would change$", p.stdout, re.M)
    assert re.search(r"^── check: 1 would change · 0 no change · 0 errors · 1 hosts · ", p.stdout,
                     re.M) and p.stdout.count("check:") == 1 and p.stderr == ""

    p = reops("files", "template", "-i", inv, "web1", str(src), conf, "--vars", "level=2",
              "--check", "-o", "json")
    doc = json.loads(p.stdout)
    assert p.returncode == 1 and doc["run"]["check"] is True
    assert doc["check"]["web1"]["changes"] is True
    assert "+level=2" in doc["check"]["web1"]["diff"]
    assert fingerprint(h, conf) == before

    p = reops("files", "template", "-i", inv, "web1", str(src), conf, "--vars", "level=1",
              "--check")
    assert p.returncode == 0, p.stdout + p.stderr

    p = reops("exec", "-i", inv, "web1", "--check", "--", "touch", f"{workdir}/cli-ran")
    assert p.returncode == 1 and "would run (cannot be checked)" in p.stdout
    assert fingerprint(h, f"{workdir}/cli-ran") == f"absent {workdir}/cli-ran\n"

    p = reops("service", "start", "-i", inv, "web1", "reops-no-such-service", "--check")
    assert p.returncode == 2, p.stdout + p.stderr


def test_check_reads_as_the_op_would_with_sudo_and_a_password(
        lab: LabInfo, workdir: str, tmp_path: Path) -> None:
    if lab.become_pass_file is None:
        pytest.skip("the lab's sudo users need root")
    h = host(lab)
    conf = f"{workdir}/root.conf"
    run(exec_(h, f"printf 'k=1\\n' > {conf} && chown root {conf} && chmod 600 {conf}",
              sudo=True, settings=FAST))
    src = tmp_path / "root.tmpl"
    src.write_text("k=$k\n")
    args = ["files", "template", "web1", str(src), conf, "--vars", "k=2", "--check"]
    p = reops(*args, "-i", str(lab.inventory))
    assert p.returncode == 2 and f"cannot read {conf} to compare it" in p.stdout + p.stderr
    p = reops(*args, "-i", str(lab.inventory), "--sudo")
    assert p.returncode == 1 and "    -k=1\n    +k=2\n" in p.stdout, p.stdout + p.stderr
    # the user whose sudo needs a password: the probe gets it on stdin, as the op would
    pw_user = inventory(lab.root / "inventory-become.toml").select("web1")
    secret = Secret(lab.become_pass_file.read_text().strip())
    out = run(template(pw_user, str(src), conf, vars={"k": "2"}, check=True, settings=Settings(
        connect_timeout=10.0, command_timeout=60.0, sudo=True, become_pass=secret)))
    assert "-k=1\n+k=2" in str(check_of(out, "web1")["diff"]), out.results
    assert sh(h, f"sudo -n cat {conf}") == "k=1\n"


def test_a_checked_pipeline_reports_every_step(lab: LabInfo, workdir: str,
                                               tmp_path: Path) -> None:
    h = host(lab)
    src = tmp_path / "p.tmpl"
    src.write_text("x=$host\n")
    new = f"{workdir}/newdir"
    out = run(check(mkdir, h, new, settings=FAST)
              | then(template, str(src), f"{new}/p.conf", settings=FAST, check=True)
              | then(ls, workdir, settings=FAST, check=True))  # a last step that changes nothing
    assert [r.op for r in out.steps("web1")] == ["files.mkdir", "files.template", "ls"]
    found = out.check("web1")
    assert found["changes"] is True and out.check_exit_code == 1
    assert f"would create directory web1:{new}\n" in str(found["diff"])
    assert "+x=web1" in str(found["diff"])
    assert set(to_table(out)["check"]) == {True}
    assert fingerprint(h, new) == f"absent {new}\n"


def test_download_of_a_missing_file_fails_its_check(lab: LabInfo, workdir: str,
                                                    tmp_path: Path) -> None:
    h = host(lab)
    out = run(download(h, f"{workdir}/nope", str(tmp_path), settings=FAST, check=True))
    assert out["web1"].status == "error" and out.check_exit_code == 2
    assert f"web1:{workdir}/nope: no such file (the download would fail)" in out["web1"].err
    assert list(tmp_path.iterdir()) == []  # nothing fetched


def test_metrics_under_check_still_sample(lab: LabInfo) -> None:
    p = reops("metrics", "-i", str(lab.inventory), "web1", "load", "--every", "1",
              "--count", "1", "--check", "-o", "jsonl")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["host"] == "web1" and "load1" in row


def test_cp_extract_and_upgrade_checks(lab: LabInfo, workdir: str) -> None:
    h = host(lab)
    sh(h, f"cd {workdir} && echo one > a && echo two > b && cp a same && tar -czf t.tgz a")
    before = fingerprint(h, f"{workdir}/b", f"{workdir}/same", f"{workdir}/x/a")
    out = run(cp(h, f"{workdir}/a", f"{workdir}/b", settings=FAST, check=True))
    assert check_of(out, "web1") == {
        "changes": True, "diff": f"would copy web1:{workdir}/a → {workdir}/b"}
    out = run(cp(h, f"{workdir}/a", f"{workdir}/same", settings=FAST, check=True))
    assert check_of(out, "web1")["changes"] is False
    out = run(extract(h, f"{workdir}/t.tgz", f"{workdir}/x", settings=FAST, check=True))
    assert check_of(out, "web1") == {
        "changes": True, "diff": f"would extract {workdir}/t.tgz into web1:{workdir}/x"}
    out = run(extract(h, f"{workdir}/t.tgz", f"{workdir}/x", creates=f"{workdir}/a",
                      settings=FAST, check=True))
    assert check_of(out, "web1")["changes"] is False
    assert fingerprint(h, f"{workdir}/b", f"{workdir}/same", f"{workdir}/x/a") == before
    # apt-get -s: a simulation, allowed without root; every line names a package
    out = run(pkg.upgrade(h, settings=FAST, check=True))
    found = check_of(out, "web1")
    assert out.ok and all(x.startswith("would upgrade ")
                          for x in str(found["diff"]).splitlines())

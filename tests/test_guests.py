"""Machines that boot, end to end through the CLI: the tiny image built from this machine's
Debian packages, two real guests on embedded QEMU (TCG) reached over SSH through their port
forwards, provisioned by their Type's recipe, stopped, started and destroyed; and the faults
a user hits (a file that is not qcow2, a missing image, a guest that never comes up)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Reops = Callable[..., subprocess.CompletedProcess[str]]

#: built images are kept here across runs, one directory per set of package versions
CACHE = Path(os.environ.get("REOPS_TEST_IMAGE_CACHE", "/var/tmp/reops-test-images"))

RECIPE = """
from reops import exec_, then

def provision(hosts, greeting="hello"):
    return exec_(hosts, f"echo {greeting} > /root/provisioned") | then(
        exec_, "cat /root/provisioned")
"""


def _why_not() -> str | None:
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        return "needs root and qemu-system-x86_64"
    missing = [p for p in ("busybox", "dropbear", "dropbearkey", "apt-get", "genisoimage")
               if shutil.which(p) is None]
    return f"needs {', '.join(missing)} (make system)" if missing else None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


#: each home's embed root and pool directory, by name
ROOTS: dict[str, str] = {}
POOLS: dict[str, str] = {}


def _qemu_pids(root: str) -> list[int]:
    """QEMU processes of one embed root (ours: the root is in their command line)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and root.encode() in cmd:
                pids.append(int(d.name))
    return pids


def _home(base: Path, name: str, ip_timeout: int = 180) -> Iterator[Reops]:
    """A REOPS_HOME with its own embedded QEMU root; guests left over are destroyed."""
    home = base / name
    home.mkdir(mode=0o700)
    root = f"/tmp/reops-g-{os.getpid()}-{name}"  # QEMU's monitor socket path must stay short
    ROOTS[name], POOLS[name] = root, f"{root}/images/default"
    config = home / "config.toml"
    config.write_text(f'[hypervisors.local]\nuri = "qemu:///embed?root={root}"\n\n'
                      f"[machines]\nip_timeout = {ip_timeout}\nstop_timeout = 30\n")
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(config)}

    def reops(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=home)

    try:
        yield reops
    finally:
        reops("systems", "destroy", "-f", "all", timeout=120)
        for pid in _qemu_pids(root):  # a destroy that failed must not leak a guest
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def reops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reops]:
    yield from _home(tmp_path_factory.mktemp("guests"), "main")


@pytest.fixture(scope="module")
def tiny(reops: Reops) -> dict[str, str]:
    """The tiny image in the pool (built once per package versions, cached across runs)."""
    p = reops("images", "build", "tiny", "--cache", str(CACHE), timeout=600)
    assert p.returncode == 0, p.stderr
    meta = json.loads(next(CACHE.glob("tiny-*/tiny.image.json")).read_text())
    return meta["versions"]


def _systems(reops: Reops, selector: str = "all") -> list[dict]:
    p = reops("systems", "ls", selector, "-o", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _exec(reops: Reops, *command: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    p = reops("exec", "--systems", "typed:web", "-o", "json", "--", *command)
    return p, (json.loads(p.stdout) if p.stdout.strip().startswith("{") else {})


def test_tiny_guests_end_to_end(reops: Reops, tiny: dict[str, str], tmp_path: Path) -> None:
    listed = reops("images", "ls")
    assert listed.returncode == 0 and "tiny" in listed.stdout and "kernel" in listed.stdout
    recipe = tmp_path / "web.py"
    recipe.write_text(RECIPE)
    assert reops("types", "add", "web", "-p", str(recipe), "--arg", "greeting=hi-guest"
                 ).returncode == 0

    made = reops("systems", "create", "web", "--preset", "tiny", "--image", "tiny",
                 "--count", "2")
    assert made.returncode == 0, made.stdout + made.stderr
    web = _systems(reops, "typed:web & running")
    assert len(web) == 2, web
    for s in web:  # running means reachable: SSH's banner was seen at this address
        assert s["state"] == "running" and s["machine"]["ip"] == "127.0.0.1"
        assert s["machine"]["port"] != 22 and s["machine"]["image"] == "tiny"

    # the host key was made by the controller and pinned before the first boot: plain
    # OpenSSH with strict checking against reops' known_hosts logs in with reops' key
    known = Path(web[0]["machine"]["known_hosts"]).read_text()
    for s in web:
        assert f"[127.0.0.1]:{s['machine']['port']} ssh-ed25519 " in known
    s0 = web[0]["machine"]
    ssh = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={s0['known_hosts']}", "-i", s0["key"],
         "-p", str(s0["port"]), "root@127.0.0.1", "hostname"],
        capture_output=True, text=True, timeout=60)
    assert ssh.returncode == 0 and ssh.stdout.strip() == s0["hostname"], ssh.stderr

    # the command runs in the guests' own kernel (Debian's cloud kernel), not this host's
    kernel = next(k for k in tiny if k.startswith("linux-image-"))
    release = kernel.removeprefix("linux-image-")
    p, doc = _exec(reops, "uname", "-r")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(doc["hosts"]) == sorted(s["machine"]["hostname"] for s in web)
    assert {r["out"].strip() for r in doc["successful"]} == {release} != {platform.release()}

    # create queued the Type's recipe on each guest; provision runs it again
    p, doc = _exec(reops, "cat", "/root/provisioned")
    assert {r["out"] for r in doc["successful"]} == {"hi-guest\n"}, p.stdout + p.stderr
    assert reops("exec", "--systems", "typed:web", "--", "rm", "/root/provisioned"
                 ).returncode == 0
    prov = reops("systems", "provision", "typed:web")
    assert prov.returncode == 0, prov.stdout + prov.stderr
    p, doc = _exec(reops, "cat", "/root/provisioned")
    assert len(doc["successful"]) == 2, p.stdout + p.stderr

    # stopped: no address; exec says so instead of looking the name up
    first = web[0]["machine"]["hostname"]
    stop = reops("systems", "stop", "-f", first)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    [stopped] = _systems(reops, first)
    assert stopped["state"] == "stopped" and stopped["machine"]["ip"] is None
    assert [s["machine"]["hostname"] for s in _systems(reops, "typed:web & running")] == [
        web[1]["machine"]["hostname"]]
    p, doc = _exec(reops, "true")  # the stopped one: not reached (exit 1), never looked up
    assert p.returncode == 1 and [r["host"] for r in doc["successful"]] == [
        web[1]["machine"]["hostname"]]
    assert [r["host"] for r in doc["failure"]["-1"]] == [first]
    assert f"{first}: no address (state stopped)" in p.stderr

    start = reops("systems", "start", first)
    assert start.returncode == 0, start.stdout + start.stderr
    assert len(_systems(reops, "typed:web & running")) == 2
    p, doc = _exec(reops, "hostname")
    assert sorted(r["out"].strip() for r in doc["successful"]) == sorted(
        s["machine"]["hostname"] for s in web), p.stdout + p.stderr

    # sync re-reads the hypervisor: a guest has no DHCP lease, its port forward answers
    synced = reops("systems", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert [s["state"] for s in _systems(reops, "typed:web & running")] == ["running"] * 2

    gone = reops("systems", "destroy", "-f", "typed:web")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert _systems(reops) == []
    assert "ssh-ed25519" not in Path(s0["known_hosts"]).read_text()  # ports are reused
    # the guest's files (overlay, initrd seed, console log, host key) are gone with it
    assert not [f for f in os.listdir(POOLS["main"]) if f.startswith(first)]
    assert not _qemu_pids(ROOTS["main"])


def test_bad_input_is_one_line(reops: Reops, tmp_path: Path) -> None:
    text = tmp_path / "disk.img"
    text.write_text("not a disk\n")
    p = reops("images", "add", "bad", str(text))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "not a qcow2 image" in p.stderr and str(text) in p.stderr
    assert reops("types", "add", "web").returncode == 0
    p = reops("systems", "create", "web", "--preset", "tiny", "--image", "nope")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "no image 'nope'" in p.stderr and "reops images add nope" in p.stderr
    assert "reops images build tiny" in p.stderr
    assert _systems(reops) == []  # nothing recorded


def test_a_guest_that_never_comes_up_fails_in_bounded_time(tmp_path: Path) -> None:
    for reops in _home(tmp_path, "dead", ip_timeout=8):
        blank = tmp_path / "blank.qcow2"  # a qcow2 with nothing to boot
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"],
                       check=True)
        assert reops("images", "add", "blank", str(blank)).returncode == 0
        assert reops("types", "add", "dud").returncode == 0
        p = reops("systems", "create", "dud", "--preset", "tiny", "--image", "blank",
                  timeout=120)
        assert p.returncode == 1, p.stdout + p.stderr
        failed = [ln for ln in p.stderr.splitlines() if "failed" in ln]
        assert len(failed) == 1 and "did not answer within 8s" in failed[0], p.stderr
        assert "console:" in failed[0]
        [s] = _systems(reops)
        assert s["state"] == "unreachable" and s["machine"]["ip"] is None
        assert not _qemu_pids(ROOTS["dead"])  # powered off, not left spinning


def test_build_without_the_packages_names_them(tmp_path: Path) -> None:
    empty = tmp_path / "bin"  # a PATH holding none of the tools the build needs
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "REOPS_HOME": str(tmp_path / "home"),
           "REOPS_CONFIG": str(tmp_path / "config.toml")}
    (tmp_path / "config.toml").write_text(
        f'[hypervisors.local]\nuri = "qemu:///embed?root=/tmp/reops-g-{os.getpid()}-none"\n')
    p = subprocess.run([sys.executable, "-m", "reops", "images", "build", "tiny", "--cache",
                        str(tmp_path / "cache")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "busybox-static" in p.stderr and "dropbear-bin" in p.stderr
    assert "apt-get install -y" in p.stderr


def test_cloud_image_seed_is_a_cidata_iso_with_the_keys(tmp_path: Path) -> None:
    import yaml

    from reops.systems import images

    private, public = images.openssh_host_key()
    iso = tmp_path / "seed.iso"
    images.nocloud_seed(iso, "web-1", "ssh-ed25519 AAAAC3Nza controller", "debian",
                        private, public)
    label = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True,
                           text=True, check=True).stdout
    assert "Volume id: cidata" in label

    def read(name: str) -> str:
        return subprocess.run(["isoinfo", "-i", str(iso), "-J", "-x", f"/{name}"],
                              capture_output=True, text=True, check=True).stdout

    assert "local-hostname: web-1" in read("meta-data")
    user_data = read("user-data")
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    assert doc["ssh_keys"]["ed25519_private"].strip() == private.strip()
    assert doc["ssh_keys"]["ed25519_public"] == public
    assert doc["users"][1]["name"] == "debian"
    assert doc["users"][1]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza controller"]
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza controller"]

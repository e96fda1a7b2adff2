"""Base images: a tiny bootable guest built here from Debian packages, and qcow2 files users add.

An image is a base volume `NAME.qcow2` in a hypervisor's pool (systems get overlays on it,
as for any base) plus `NAME.image.json` saying how it boots:

- ``kind = "kernel"`` (``reops images build tiny``): direct kernel boot. The pool also holds
  `NAME.vmlinuz` (Debian's cloud kernel, extracted from its .deb, not installed) and
  `NAME.initrd` (busybox-static + dropbear + the virtio/net modules, an init that brings eth0
  up by DHCP and starts the SSH server). Each guest boots that initrd with a small cpio of
  its own appended (the kernel unpacks concatenated archives in order): its host key, made
  here before the first boot and recorded in reops' known_hosts, and the controller's
  public key.  Dropbear, not OpenSSH: one small binary with five libraries, no privilege
  separation user, PAM or /run layout to fake, and `dropbearkey` makes its host keys.
- ``kind = "disk"`` (``reops images add NAME FILE.qcow2``): a bootable disk, e.g. a Debian
  genericcloud image; each guest gets a cloud-init NoCloud seed (an ISO labelled `cidata`)
  with the controller's key, its hostname and its host key.

Everything that needs packages says which one is missing and how to install it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import msgspec

from reops.store.model import MachinesError
from reops.systems.libvirt.pools import DirPool, Pool

#: kernel modules the tiny guest loads (with their dependencies), in this order
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "evdev", "button", "virtio_rng")
#: the Debian packages the tiny image is built from (kernel: the cloud flavour's current one)
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PKG = "busybox-static"
DROPBEAR_PKG = "dropbear-bin"
#: the image's kernel command line: serial console, quiet, panic -> reboot is not wanted
CMDLINE = "console=ttyS0 quiet panic=-1"
#: what the build needs on this machine: (program, Debian package)
TOOLS = (("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg-deb", "dpkg"), ("busybox", BUSYBOX_PKG),
         ("dropbear", DROPBEAR_PKG), ("dropbearkey", DROPBEAR_PKG), ("ldd", "libc-bin"),
         ("qemu-img", "qemu-utils"))


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """What `NAME.image.json` records about a base image."""

    name: str
    kind: str  # "kernel" (direct kernel boot, tiny) or "disk" (bootable qcow2, cloud-init)
    volume: str  # the base volume systems get overlays on
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    user: str = "root"
    source: str = ""
    versions: dict[str, str] = msgspec.field(default_factory=dict)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MachinesError(f"{argv[0]} is not installed") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise MachinesError(f"{' '.join(argv[:3])}: {why[-1] if why else done.returncode}")
    return done.stdout


def check_tools() -> None:
    """One line naming what is missing for `images build tiny`, and how to install it."""
    missing = sorted({pkg for prog, pkg in TOOLS if shutil.which(prog) is None})
    if missing:
        raise MachinesError(f"building the tiny image needs {', '.join(missing)}: "
                            f"apt-get install -y {' '.join(missing)}")


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META])
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise MachinesError(f"apt knows no {KERNEL_META} (apt-get update, or check sources)")
    return m.group(1)


def installed_version(pkg: str) -> str:
    return _run(["dpkg-query", "-W", "-f", "${Version}", pkg]).strip()


def tiny_versions() -> dict[str, str]:
    """The package versions the tiny image is made of: its cache key."""
    kpkg = kernel_package()
    policy = _run(["apt-cache", "policy", kpkg])
    m = re.search(r"Candidate:\s*(\S+)", policy)
    return {kpkg: m.group(1) if m else "?", BUSYBOX_PKG: installed_version(BUSYBOX_PKG),
            DROPBEAR_PKG: installed_version(DROPBEAR_PKG)}


# ---- cpio (newc), what the kernel unpacks an initramfs from
def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    head = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = head + encoded
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def cpio(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of (path, mode, data) entries; symlinks carry their target as data."""
    parts = [_cpio_entry(name.lstrip("/"), mode, data, i + 1)
             for i, (name, mode, data) in enumerate(entries)]
    parts.append(_cpio_entry("TRAILER!!!", 0))
    return b"".join(parts)


def cpio_of(root: Path) -> bytes:
    """A directory tree as a newc archive (owner root, modes and symlinks kept)."""
    entries: list[tuple[str, int, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*sorted(dirnames), *sorted(filenames)]:
            p = base / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append((rel, st.st_mode, os.readlink(p).encode()))
            elif stat.S_ISDIR(st.st_mode):
                entries.append((rel, st.st_mode, b""))
            else:
                entries.append((rel, st.st_mode, p.read_bytes()))
    return cpio(entries)


# ---- the root filesystem (reusable: the same tree serves a libvirt LXC container)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
UDHCPC_SCRIPT = """\
#!/bin/sh
# udhcpc calls this with bound/renew/deconfig; configure eth0 from what it got
case "$1" in
  deconfig) ifconfig "$interface" 0.0.0.0 ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
    for r in $router; do route add default gw "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
"""
START_SSHD = """\
#!/bin/sh
# start the SSH server with the host key the controller made for this guest
mkdir -p /etc/dropbear /root/.ssh
chmod 700 /root /root/.ssh
[ -f /root/.ssh/authorized_keys ] && chmod 600 /root/.ssh/authorized_keys
exec dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p "${1:-22}" -P /run/dropbear.pid
"""


def _libs(binary: str) -> list[str]:
    """The shared libraries `binary` loads (ldd), loader included."""
    out = _run(["ldd", binary])
    libs = re.findall(r"=>\s*(/\S+)", out) + re.findall(r"^\s*(/\S+)\s", out, re.M)
    return sorted(set(libs))


def _copy(src: str, root: Path, dest: str | None = None) -> None:
    target = root / (dest or src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def build_rootfs(root: Path) -> Path:
    """A minimal root filesystem in `root`: busybox-static (every applet linked), dropbear
    with its libraries and sftp-server, /etc (passwd, group, shells, udhcpc script) and
    `/sbin/reops-sshd` that starts dropbear. What a VM initramfs or an LXC container needs
    from this machine's packages; returns `root`."""
    check_tools()
    busybox = shutil.which("busybox")
    dropbear = shutil.which("dropbear")
    assert busybox and dropbear
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run",
              "tmp", "root", "var/log", "lib/modules", "etc/dropbear", "usr/share/udhcpc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    _copy(busybox, root, "/bin/busybox")
    applets = _run([busybox, "--list-full"]).split()
    for applet in applets:
        link = root / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    _copy(dropbear, root, "/usr/sbin/dropbear")
    bins = [dropbear]
    sftp = "/usr/lib/openssh/sftp-server"
    if os.path.exists(sftp):  # dropbear runs /usr/lib/sftp-server for the sftp subsystem
        _copy(sftp, root, "/usr/lib/sftp-server")
        bins.append(sftp)
    for b in bins:
        for lib in _libs(b):
            _copy(lib, root)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shells").write_text("/bin/sh\n")
    (root / "etc/hostname").write_text("tiny\n")
    script = root / "usr/share/udhcpc/default.script"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    sshd = root / "sbin/reops-sshd"
    sshd.write_text(START_SSHD)
    sshd.chmod(0o755)
    return root


# ---- the tiny VM image
INIT = """\
#!/bin/sh
# reops tiny guest: modules, network by DHCP, SSH server; PID 1 stays here
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; mount -t tmpfs tmp /run
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
hostname -F /etc/hostname
ifconfig lo 127.0.0.1 up
ifconfig eth0 up
udhcpc -i eth0 -b -t 20 -T 1 -A 1 -S -s /usr/share/udhcpc/default.script
acpid -c /etc/acpi 2>/dev/null
/sbin/reops-sshd 22
echo "reops-guest: $(hostname) ssh up" > /dev/console
trap 'poweroff -f' USR2 TERM
while :; do sleep 3600; done
"""


def _module_index(modroot: Path) -> dict[str, Path]:
    return {p.name[:-3].replace("-", "_"): p for p in modroot.rglob("*.ko")}


def _depends(ko: Path) -> list[str]:
    m = re.search(rb"\0depends=([^\0]*)\0", b"\0" + ko.read_bytes())
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def module_closure(modroot: Path, wanted: Iterable[str]) -> list[Path]:
    """The .ko files of `wanted` and what they depend on, dependencies first."""
    index = _module_index(modroot)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in index:
            return  # built into the kernel
        seen.add(name)
        for dep in _depends(index[name]):
            visit(dep)
        order.append(index[name])

    for name in wanted:
        visit(name)
    return order


def build_tiny(out: Path) -> Image:
    """Make `tiny.vmlinuz` and `tiny.initrd` in `out` from Debian packages (apt-get download
    of the cloud kernel, dpkg-deb -x; nothing is installed)."""
    check_tools()
    versions = tiny_versions()
    kpkg = next(iter(versions))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reops-tiny-") as tmp:
        t = Path(tmp)
        _run(["apt-get", "download", "-q", kpkg], cwd=t)
        deb = next(t.glob("*.deb"), None)
        if deb is None:
            raise MachinesError(f"apt-get download {kpkg} gave no .deb")
        x = t / "x"
        _run(["dpkg-deb", "-x", str(deb), str(x)])
        vmlinuz = next((x / "boot").glob("vmlinuz-*"))
        modroot = next((x / "lib/modules").iterdir())
        root = build_rootfs(t / "root")
        order = []
        for ko in module_closure(modroot, GUEST_MODULES):
            shutil.copy2(ko, root / "lib/modules" / ko.name)
            order.append(ko.name)
        (root / "etc/modules.order").write_text("\n".join(order) + "\n")
        (root / "etc/acpi/PWRF").mkdir(parents=True, exist_ok=True)
        off = root / "etc/acpi/PWRF/00000080"
        off.write_text("#!/bin/sh\npoweroff -f\n")
        off.chmod(0o755)
        (root / "etc/acpid.conf").write_text("PWRF PWRF/00000080\n")
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        data = gzip.compress(cpio_of(root), compresslevel=6, mtime=0)
        (out / "tiny.initrd").write_bytes(data)
        shutil.copy2(vmlinuz, out / "tiny.vmlinuz")
    image = Image(name="tiny", kind="kernel", volume="tiny.qcow2", kernel="tiny.vmlinuz",
                  initrd="tiny.initrd", cmdline=CMDLINE, source="reops images build tiny",
                  versions=versions)
    (out / "tiny.image.json").write_bytes(msgspec.json.encode(image))
    return image


def cached_tiny(cache: Path | None = None) -> tuple[Path, Image]:
    """The tiny image's files, built once per set of package versions under `cache`
    (default ~/.reops/cache/images/tiny-KEY)."""
    from reops.core.settings import home

    check_tools()
    versions = tiny_versions()
    key = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:12]
    base = cache or home() / "cache" / "images"
    where = base / f"tiny-{key}"
    meta = where / "tiny.image.json"
    if meta.exists():
        return where, msgspec.json.decode(meta.read_bytes(), type=Image)
    tmp = base / f".tiny-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    image = build_tiny(tmp)
    with contextlib.suppress(OSError):  # another build got there first: use its files
        tmp.rename(where)
    shutil.rmtree(tmp, ignore_errors=True)
    return where, image


# ---- per-guest seeds
def host_key() -> tuple[bytes, str]:
    """A new ed25519 host key: (dropbear's private key file, OpenSSH public key line)."""
    with tempfile.TemporaryDirectory(prefix="reops-hostkey-") as tmp:
        path = Path(tmp) / "key"
        out = _run(["dropbearkey", "-t", "ed25519", "-f", str(path)])
        pub = next((ln for ln in out.splitlines() if ln.startswith("ssh-ed25519 ")), None)
        if pub is None:
            raise MachinesError("dropbearkey printed no public key")
        return path.read_bytes(), " ".join(pub.split()[:2])


def tiny_seed(hostname: str, authorized_key: str, private_host_key: bytes) -> bytes:
    """The cpio.gz appended to the tiny initrd for one guest: hostname, keys."""
    return gzip.compress(cpio([
        ("etc", 0o40755, b""), ("etc/dropbear", 0o40700, b""), ("root", 0o40700, b""),
        ("root/.ssh", 0o40700, b""),
        ("etc/hostname", 0o100644, f"{hostname}\n".encode()),
        ("etc/dropbear/dropbear_ed25519_host_key", 0o100600, private_host_key),
        ("root/.ssh/authorized_keys", 0o100600, f"{authorized_key.strip()}\n".encode()),
    ]), mtime=0)


def openssh_host_key() -> tuple[str, str]:
    """A new ed25519 host key for cloud-init: (OpenSSH private key text, public key line)."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    return (key.export_private_key("openssh").decode(),
            key.export_public_key("openssh").decode().strip())


def nocloud_seed(path: Path, hostname: str, authorized_key: str, user: str,
                 host_private: str, host_public: str) -> None:
    """A cloud-init NoCloud seed ISO (label `cidata`) with the user's key and the host key."""
    tool = shutil.which("genisoimage") or shutil.which("xorrisofs")
    if tool is None:
        raise MachinesError("a cloud image's seed needs genisoimage: apt-get install -y "
                            "genisoimage")
    indent = "\n".join("      " + ln for ln in host_private.strip().splitlines())
    user_data = (
        "#cloud-config\n"
        f"hostname: {hostname}\n"
        "ssh_pwauth: false\n"
        "disable_root: false\n"  # root gets the keys too (not the "login as" stub)
        f"ssh_authorized_keys: [{json.dumps(authorized_key)}]\n"  # the image's default user
        + ("" if user == "root" else
           f"users:\n  - default\n  - name: {user}\n"
           f"    ssh_authorized_keys: [{json.dumps(authorized_key)}]\n"
           "    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n") +
        "ssh_deletekeys: true\n"
        "ssh_keys:\n"
        "  ed25519_private: |\n" + indent + "\n"
        f"  ed25519_public: {host_public}\n"
    )
    with tempfile.TemporaryDirectory(prefix="reops-seed-") as tmp:
        t = Path(tmp)
        (t / "user-data").write_text(user_data)
        (t / "meta-data").write_text(f"instance-id: {hostname}\nlocal-hostname: {hostname}\n")
        _run([tool, "-quiet", "-output", str(path), "-volid", "cidata", "-joliet", "-rock",
              str(t / "user-data"), str(t / "meta-data")])


def is_qcow2(path: Path) -> bool:
    """Whether `path` starts with the qcow2 magic."""
    with path.open("rb") as f:
        return f.read(4) == b"QFI\xfb"


# ---- images in a pool
META = ".image.json"


def pool_for(uri: str, pool: str) -> Pool:
    """The pool images live in, without a libvirt connection: embedded QEMU's directory."""
    from reops.systems.libvirt.hypervisor import embed_root

    root = embed_root(uri)
    if root is None:
        raise MachinesError(f"images are kept for the embedded hypervisor only (qemu:///embed), "
                            f"not {uri}: put base volumes in that pool with virsh vol-upload")
    return DirPool(root / "images" / pool)


def images(pool: Pool) -> list[Image]:
    """The images recorded in `pool`."""
    out = []
    for name in pool.volumes():
        if name.endswith(META):
            data = pool.read(name)
            if data:
                out.append(msgspec.json.decode(data, type=Image))
    return out


def image(pool: Pool, name: str, where: str) -> Image:
    """The named image; one line saying how to add one when it is not there."""
    data = pool.read(f"{name}{META}")
    if data is None:
        have = ", ".join(i.name for i in images(pool)) or "none"
        raise MachinesError(
            f"no image {name!r} in {where} (has: {have}): add one with "
            f"`reops images add {name} FILE.qcow2` or `reops images build tiny`")
    return msgspec.json.decode(data, type=Image)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise MachinesError(f"bad image name {name!r}: letters, digits, '.', '_' and '-'")


def add(pool: Pool, name: str, file: Path, user: str = "root") -> Image:
    """Copy a bootable qcow2 (e.g. a genericcloud image) into the pool as image `name`."""
    _check_name(name)
    if not file.is_file():
        raise MachinesError(f"{file}: no such file")
    if not is_qcow2(file):
        raise MachinesError(f"{file}: not a qcow2 image (convert it: qemu-img convert -O qcow2 "
                            f"{file} {file.stem}.qcow2)")
    img = Image(name=name, kind="disk", volume=f"{name}.qcow2", user=user, source=str(file))
    pool.put(img.volume, file.resolve())
    pool.put(f"{name}{META}", msgspec.json.encode(img))
    return img


def remove(pool: Pool, name: str, used_by: list[str]) -> Image:
    """Delete an image's files; refused while systems have overlays on it."""
    img = image(pool, name, "the pool")
    if used_by:
        raise MachinesError(f"image {name!r} is the base of {', '.join(used_by)}: "
                            "destroy them first (reops systems destroy …)")
    for f in (img.volume, img.kernel, img.initrd, f"{name}{META}"):
        if f:
            pool.delete(f)
    return img


def install_tiny(pool: Pool, cache: Path | None = None) -> Image:
    """Build (or take from the cache) the tiny image and put it in the pool as `tiny`."""
    where, img = cached_tiny(cache)
    for f in (img.kernel, img.initrd):
        assert f
        pool.put(f, where / f)
    if pool.path(img.volume) is None:  # the guest's blank data disk: its overlays' base
        pool.create(img.volume, 1, None)
    pool.put(f"{img.name}{META}", msgspec.json.encode(img))
    return img


# ---- a guest of an image
class GuestBoot(msgspec.Struct, frozen=True, kw_only=True):
    """What a guest of an image boots with: domain fields and its own pool files."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    cdrom: str | None = None
    console_log: str | None = None
    files: tuple[str, ...] = ()
    host_public: str = ""  # the guest's host key, for known_hosts


def prepare_guest(pool: Pool, img: Image, domain: str, hostname: str,
                  authorized_key: str) -> GuestBoot:
    """Make the guest's host key and seed (initrd cpio or NoCloud ISO) in the pool."""
    console = f"{domain}.console.log"
    pool.put(console, b"")
    if img.kind == "kernel":
        assert img.kernel and img.initrd
        private, public = host_key()
        base = pool.read(img.initrd) or b""
        seed = tiny_seed(hostname, authorized_key, private)
        initrd = pool.put(f"{domain}.initrd", base + seed)
        return GuestBoot(kernel=pool.path(img.kernel), initrd=initrd, cmdline=img.cmdline,
                         console_log=pool.path(console),
                         files=(f"{domain}.initrd", console), host_public=public)
    private_text, public = openssh_host_key()
    with tempfile.TemporaryDirectory(prefix="reops-seed-") as tmp:
        iso = Path(tmp) / "seed.iso"
        nocloud_seed(iso, hostname, authorized_key, img.user, private_text, public)
        cdrom = pool.put(f"{domain}.seed.iso", iso)
    return GuestBoot(cdrom=cdrom, console_log=pool.path(console),
                     files=(f"{domain}.seed.iso", console), host_public=public)


def console_tail(path: str | None, lines: int = 1) -> str:
    """The guest console's last non-empty line(s), for an error message."""
    if not path or not os.path.exists(path):
        return ""
    text = Path(path).read_bytes()[-4000:].decode(errors="replace")
    kept = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).splitlines()
            if ln.strip()]
    return " | ".join(kept[-lines:])


# ---- the controller's key and reops' known_hosts
def guest_key(configured: str | None = None) -> tuple[str, str]:
    """(private key path, public key line) injected into guests: the configured ssh key
    when it has a .pub beside it, else reops' own ~/.reops/keys/guest_ed25519 (made once)."""
    import asyncssh

    from reops.core.settings import home

    if configured:
        pub = Path(os.path.expanduser(configured) + ".pub")
        if pub.is_file():
            return os.path.expanduser(configured), pub.read_text().strip()
    path = home() / "keys" / "guest_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="reops guests")
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(key.export_private_key("openssh"))
        tmp.chmod(0o600)
        Path(f"{path}.pub").write_bytes(key.export_public_key("openssh"))
        tmp.replace(path)
    return str(path), Path(f"{path}.pub").read_text().strip()


def known_hosts_path() -> Path:
    from reops.core.settings import home

    return home() / "known_hosts"


def _pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def record_host_key(address: str, port: int, public: str, path: Path | None = None) -> str:
    """Pin `public` for address:port in reops' known_hosts (replacing an older pin)."""
    import fcntl

    p = path or known_hosts_path()
    pattern = _pattern(address, port)
    with open(p, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        kept = [ln for ln in f.read().splitlines(keepends=True)
                if ln.split(" ", 1)[0] != pattern]
        f.seek(0)
        f.truncate()
        f.write("".join(kept) + f"{pattern} {public}\n")
    return str(p)


def forget_host_key(address: str, port: int, path: Path | None = None) -> None:
    """Drop the pin for address:port (a destroyed guest's port may serve another later)."""
    import fcntl

    p = path or known_hosts_path()
    if not p.exists():
        return
    pattern = _pattern(address, port)
    with open(p, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        kept = [ln for ln in f.read().splitlines(keepends=True)
                if ln.split(" ", 1)[0] != pattern]
        f.seek(0)
        f.truncate()
        f.write("".join(kept))


async def wait_ssh(address: str, port: int, timeout: float) -> bool:
    """Whether an SSH server's banner (`SSH-`) is seen on address:port within `timeout`.

    A slirp port forward accepts connections before the guest listens (then closes them),
    so only the banner counts."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.2
    while loop.time() < deadline:
        left = deadline - loop.time()
        try:
            async with asyncio.timeout(min(3.0, left)):
                reader, writer = await asyncio.open_connection(address, port)
                try:
                    if (await reader.readline()).startswith(b"SSH-"):
                        return True
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 1.5, 1.0)
    return False


def free_port(taken: Iterable[int] = ()) -> int:
    """A free TCP port on 127.0.0.1, not one of `taken` (ports other guests keep)."""
    import socket

    avoid = set(taken)
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise MachinesError("no free port on 127.0.0.1 for a guest's SSH forward")

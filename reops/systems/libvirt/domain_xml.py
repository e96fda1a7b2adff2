"""Domain and volume XML for libvirt, from templates; and reading back what we need.

The system id rides in the domain's <description>, so `sync` can tell reops' own domains
from foreign ones and re-attach records after the store or the controller was lost.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from string import Template
from xml.sax.saxutils import escape, quoteattr

import msgspec

DESCRIPTION = "reops system {id}"
_ID_IN_DESCRIPTION = re.compile(r"reops system ([0-9a-f]{40})")

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

DOMAIN = Template("""\
<domain type=$type$ns>
  <name>$name</name>
  <description>$description</description>
  <memory unit='MiB'>$ram</memory>
  <vcpu>$cpu</vcpu>
  <os><type arch='x86_64'>hvm</type>$boot</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
$devices
  </devices>$extra
</domain>
""")

#: direct kernel boot (the tiny image): kernel and initrd are files in the pool
KERNEL_BOOT = Template(
    "<kernel>$kernel</kernel><initrd>$initrd</initrd><cmdline>$cmdline</cmdline>")

#: the serial console to a file, so a guest that never comes up can say why
CONSOLE_LOG = Template("""\
    <serial type='file'><source path=$path/><target port='0'/></serial>
    <console type='file'><source path=$path/><target type='serial' port='0'/></console>""")

CDROM = Template("""\
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file=$path/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>""")

#: QEMU user-mode networking with SSH forwarded from 127.0.0.1:PORT. libvirt 9.0's own
#: <interface type='user'><portForward> needs passt, which is not here (and refuses to run
#: as root); qemu's slirp `hostfwd` does the same through the qemu:commandline namespace.
HOSTFWD = Template("""
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value=$netdev/>
    <qemu:arg value='-device'/>
    <qemu:arg value=$device/>
  </qemu:commandline>""")
_HOSTFWD_PORT = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22\b")

DISK = Template("""\
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file=$path/>
      <target dev=$dev bus='virtio'/>
    </disk>""")

NETWORK_NIC = Template("""\
    <interface type='network'>
      <source network=$network/>
      <mac address=$mac/>
      <model type='virtio'/>
    </interface>""")

USER_NIC = Template("""\
    <interface type='user'>
      <mac address=$mac/>
      <model type='virtio'/>
    </interface>""")

VOLUME = Template("""\
<volume>
  <name>$name</name>
  <capacity unit='GiB'>$size_gb</capacity>
  <target><format type='qcow2'/></target>$backing
</volume>
""")

BACKING = Template("""
  <backingStore><path>$path</path><format type='qcow2'/></backingStore>""")


class DiskSpec(msgspec.Struct, frozen=True):
    """A disk already in a pool: its path on the hypervisor."""

    path: str


class DomainSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to define: everything the template needs."""

    name: str
    system_id: str
    cpu: int
    ram: int  # MiB
    disks: tuple[DiskSpec, ...] = ()
    network: str | None = None  # a libvirt network; "user" for QEMU user-mode; None: no NIC
    mac: str = ""
    type: str = "qemu"  # libvirt domain type: test, qemu, kvm
    kernel: str | None = None  # direct kernel boot: kernel and initrd paths, command line
    initrd: str | None = None
    cmdline: str = ""
    cdrom: str | None = None  # e.g. a cloud-init NoCloud seed ISO
    console_log: str | None = None  # the serial console, written to this file
    #: user-mode networking with 127.0.0.1:ssh_port -> guest 22 (0: none)
    ssh_port: int = 0


class DomainInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `sync` and `status` read back from a domain."""

    name: str
    uuid: str
    state: str
    cpu: int
    ram: int  # MiB
    system_id: str | None = None
    mac: str | None = None
    networks: tuple[str, ...] = ()
    disks: tuple[str, ...] = ()
    ssh_port: int = 0  # the host port forwarded to the guest's SSH (user-mode networking)


def mac_for(system_id: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from the id."""
    b = bytes.fromhex(system_id[:6])
    return "52:54:00:" + ":".join(f"{x:02x}" for x in b)


def domain_xml(spec: DomainSpec) -> str:
    """The <domain> document for `spec`."""
    devices = [
        DISK.substitute(path=quoteattr(d.path), dev=quoteattr(f"vd{chr(ord('a') + i)}"))
        for i, d in enumerate(spec.disks)
    ]
    if spec.cdrom:
        devices.append(CDROM.substitute(path=quoteattr(spec.cdrom)))
    if spec.console_log:
        devices.append(CONSOLE_LOG.substitute(path=quoteattr(spec.console_log)))
    extra = ns = ""
    if spec.network == "user" and spec.ssh_port:
        extra = HOSTFWD.substitute(
            netdev=quoteattr(f"user,id=reops0,hostfwd=tcp:127.0.0.1:{int(spec.ssh_port)}-:22"),
            device=quoteattr(f"virtio-net-pci,netdev=reops0,mac={spec.mac},addr=0x10"),
        )
        ns = f" xmlns:qemu={quoteattr(QEMU_NS)}"
    elif spec.network == "user":
        devices.append(USER_NIC.substitute(mac=quoteattr(spec.mac)))
    elif spec.network:
        devices.append(
            NETWORK_NIC.substitute(network=quoteattr(spec.network), mac=quoteattr(spec.mac))
        )
    boot = "<boot dev='hd'/>"
    if spec.kernel:
        boot = KERNEL_BOOT.substitute(kernel=escape(spec.kernel),
                                      initrd=escape(spec.initrd or ""),
                                      cmdline=escape(spec.cmdline))
    return DOMAIN.substitute(
        type=quoteattr(spec.type),
        ns=ns,
        name=escape(spec.name),
        description=escape(DESCRIPTION.format(id=spec.system_id)),
        ram=int(spec.ram),
        cpu=int(spec.cpu),
        boot=boot,
        devices="\n".join(devices),
        extra=extra,
    )


def volume_xml(name: str, size_gb: int, backing_path: str | None = None) -> str:
    """A qcow2 volume, an overlay on `backing_path` when given."""
    backing = BACKING.substitute(path=escape(backing_path)) if backing_path else ""
    return VOLUME.substitute(name=escape(name), size_gb=int(size_gb), backing=backing)


def system_id_of(description: str | None) -> str | None:
    m = _ID_IN_DESCRIPTION.search(description or "")
    return m.group(1) if m else None


def parse_domain(xml: str, state: str) -> DomainInfo:
    """A DomainInfo from a domain's XMLDesc."""
    root = ET.fromstring(xml)
    mem = root.find("memory")
    unit = (mem.get("unit", "KiB") if mem is not None else "KiB").lower()
    amount = int(mem.text or 0) if mem is not None else 0
    scale = {"b": 1 / 1024**2, "bytes": 1 / 1024**2, "kib": 1 / 1024, "k": 1 / 1024,
             "mib": 1, "m": 1, "gib": 1024, "g": 1024}.get(unit, 1 / 1024)
    nic = root.find("devices/interface/mac")
    args = [a.get("value", "") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    fwd = next((m for m in map(_HOSTFWD_PORT.search, args) if m), None)
    return DomainInfo(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        state=state,
        cpu=int(root.findtext("vcpu", "1") or 1),
        ram=int(amount * scale),
        system_id=system_id_of(root.findtext("description")),
        mac=nic.get("address") if nic is not None else None,
        networks=tuple(
            s.get("network", "") for s in root.findall("devices/interface/source")
            if s.get("network")
        ),
        disks=tuple(
            s.get("file", "") for s in root.findall("devices/disk/source") if s.get("file")
        ),
        ssh_port=int(fwd.group(1)) if fwd else 0,
    )

"""A libvirt test-driver node (domains, a network, a pool with base volumes) for the tests."""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path

NODE_XML = """\
<node>
  <domain type='test'>
    <name>legacy1</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory unit='MiB'>512</memory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <interface type='network'><source network='default'/>
        <mac address='52:54:00:aa:00:01'/></interface>
    </devices>
  </domain>
  <domain type='test'>
    <name>legacy2</name>
    <memory unit='MiB'>1024</memory>
    <vcpu>2</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
  </domain>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
  <pool type='dir'>
    <name>default</name>
    <target><path>/var/lib/reops-test/images</path></target>
    <volume type='file'>
      <name>debian-12.qcow2</name>
      <capacity unit='GiB'>2</capacity>
      <target><format type='qcow2'/></target>
    </volume>
    <volume type='file'>
      <name>alpine-3.qcow2</name>
      <capacity unit='GiB'>1</capacity>
      <target><format type='qcow2'/></target>
    </volume>
  </pool>
</node>
"""


def node_uri(tmp: Path) -> str:
    """A test:/// URI for a fresh copy of the node (each open starts from this file)."""
    path = tmp / "node.xml"
    path.write_text(NODE_XML)
    return f"test://{path}"


def config_toml(tmp: Path, *, extra: str = "") -> Path:
    """A config.toml naming the test node `lab` (and an unreachable `far`)."""
    path = tmp / "config.toml"
    path.write_text(
        f'[hypervisors.lab]\nuri = "{node_uri(tmp)}"\n\n'
        '[hypervisors.far]\nuri = "qemu+tcp://127.0.0.1:1/system"\n\n'
        '[hypervisors.rack]\nkind = "physical"\n\n'
        '[machines]\ndefault_hypervisor = "lab"\nstop_timeout = 5\nip_timeout = 5\n'
        'connect_timeout = 5\n' + extra
    )
    return path


def qemu_root(suffix: str = "") -> str:
    """One qemu:///embed root for this process: libvirt allows one per process, and QEMU's
    monitor socket path must stay short (so not under pytest's deep tmp_path). A suffix
    names a root for other processes (e.g. hubs the test starts)."""
    root = Path(f"/tmp/reops-qemu-{os.getpid()}{suffix}")
    if not root.exists():
        root.mkdir()
        atexit.register(shutil.rmtree, root, True)
    return str(root)

"""Containers: systems on libvirt's LXC driver (`lxc:///system`), same jobs as VMs.

Why libvirt LXC and not LXD: LXD is not in Debian 12 main, while `libvirt-daemon-driver-lxc`
is; and an LXC domain is just another libvirt domain, so the Hypervisor connection, its
lifecycle events, selectors and the job queue are the ones VMs use. A container's root
filesystem is the tiny guest's (busybox + dropbear, reops.systems.images.build_rootfs);
see containers.py for how it is made, addressed and reached over SSH, and daemon.py for a
private libvirtd serving the driver (tests, docs, a machine without one running).
"""

from __future__ import annotations

import urllib.parse


def is_lxc(uri: str) -> bool:
    """Whether a libvirt URI reaches the LXC driver (lxc:///system, lxc+unix://…)."""
    return urllib.parse.urlsplit(uri).scheme.split("+")[0] == "lxc"

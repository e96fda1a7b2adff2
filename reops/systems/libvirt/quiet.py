"""Import libvirt with its own log in ~/.reops/libvirt.log, not on our stderr.

The embedded QEMU driver (`qemu:///embed`) logs banners, warnings and the errors we
handle anyway ("Domain not found" while checking a name is free) straight to stderr, in
the middle of a command's output. Our errors say what failed; the full log is in the file.
Set LIBVIRT_LOG_OUTPUTS yourself to send it elsewhere.
"""

from __future__ import annotations

import os

from reops.core.settings import home

if "LIBVIRT_LOG_OUTPUTS" not in os.environ:
    home().mkdir(parents=True, exist_ok=True)
    os.environ["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{home() / 'libvirt.log'}"

import libvirt

__all__ = ["libvirt"]

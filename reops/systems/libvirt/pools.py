"""Where disks live: a libvirt storage pool, or a plain directory for embedded QEMU.

`qemu:///embed` has no storage driver, so its volumes are files under its root made with
`qemu-img` (overlays with `-b BASE -F qcow2`, as the pool API would make them). Both
expose the few calls the provider needs; all are blocking and run in worker threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

from reops.store.model import MachinesError
from reops.systems.libvirt.domain_xml import volume_xml
from reops.systems.libvirt.quiet import libvirt


class Pool(Protocol):
    """A place for volumes: list, find, create (optionally over a base), delete."""

    def volumes(self) -> list[str]: ...
    def path(self, name: str) -> str | None: ...
    def create(self, name: str, size_gb: int, base: str | None) -> str: ...
    def delete(self, name: str) -> None: ...
    def put(self, name: str, data: bytes | Path) -> str: ...
    def read(self, name: str) -> bytes | None: ...


def _gone(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL


class LibvirtPool:
    """A libvirt storage pool, through the storage pool API."""

    def __init__(self, pool: libvirt.virStoragePool) -> None:
        self.pool = pool

    def volumes(self) -> list[str]:
        return list(self.pool.listVolumes())

    def path(self, name: str) -> str | None:
        try:
            return str(self.pool.storageVolLookupByName(name).path())
        except libvirt.libvirtError as e:
            if _gone(e):
                return None
            raise

    def create(self, name: str, size_gb: int, base: str | None) -> str:
        backing = self.path(base) if base else None
        if base and backing is None:
            raise MachinesError(f"no base volume {base!r} in pool {self.pool.name()!r}")
        return str(self.pool.createXML(volume_xml(name, size_gb, backing), 0).path())

    def delete(self, name: str) -> None:
        try:
            self.pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as e:
            if not _gone(e):
                raise

    def put(self, name: str, data: bytes | Path) -> str:
        raise MachinesError(
            f"images in libvirt storage pool {self.pool.name()!r} are not supported yet: "
            "use the embedded default hypervisor, or put the files in the pool's directory")

    def read(self, name: str) -> bytes | None:
        return None  # no image metadata on libvirt pools (see put)


class DirPool:
    """A directory of qcow2 files made with qemu-img (for drivers without storage pools)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def volumes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def path(self, name: str) -> str | None:
        p = self.root / name
        return str(p) if p.exists() else None

    def create(self, name: str, size_gb: int, base: str | None) -> str:
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise MachinesError("qemu-img is needed to make disks for embedded QEMU "
                                "(apt-get install qemu-utils)")
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / name
        argv = [qemu_img, "create", "-q", "-f", "qcow2"]
        if base:
            backing = self.path(base)
            if backing is None:
                raise MachinesError(f"no base volume {base!r} in {self.root}")
            argv += ["-b", backing, "-F", "qcow2"]
        argv += [str(target), f"{int(size_gb)}G"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise MachinesError(f"qemu-img: {why[0] if why else done.returncode}")
        return str(target)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def put(self, name: str, data: bytes | Path) -> str:
        """Write `data` (or copy a file) as `name`, atomically: a reader never sees half."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.part"
        if isinstance(data, Path):
            shutil.copyfile(data, tmp)
        else:
            tmp.write_bytes(data)
        tmp.replace(target)
        return str(target)

    def read(self, name: str) -> bytes | None:
        p = self.root / name
        return p.read_bytes() if p.is_file() else None

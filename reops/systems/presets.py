"""Presets: named, composable fragments of a machine spec (size, os, count, volumes, hypervisor).

As in re-core, `--preset small --preset debian-12 --preset count=3` composes left to right;
later fragments override earlier ones, volumes accumulate. Config `[presets.NAME]` tables add
or override fragments and may `use` other presets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from reops.store.model import MachinesError, Volume

#: sizes like cloud flavours: cpu, ram (MiB), root disk (GB)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"cpu": 1, "ram": 256, "disk_gb": 1},
    "small": {"cpu": 1, "ram": 1024, "disk_gb": 10},
    "medium": {"cpu": 2, "ram": 2048, "disk_gb": 20},
    "large": {"cpu": 4, "ram": 8192, "disk_gb": 40},
    "xlarge": {"cpu": 8, "ram": 16384, "disk_gb": 80},
}

#: operating systems: the root disk is an overlay on the pool volume `<os>.qcow2`
OSES = ("debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04", "alpine-3", "fedora-41")

BUILTIN: dict[str, dict[str, Any]] = {
    **SIZES,
    **{os_: {"os": os_, "base": f"{os_}.qcow2"} for os_ in OSES},
}

INLINE = {"cpu", "ram", "disk_gb", "count", "os", "base", "hypervisor", "user", "domain",
          "image"}


class Spec(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved machine spec: what `create` builds, `count` times."""

    cpu: int = 1
    ram: int = 512
    disk_gb: int = 10
    os: str = ""
    base: str | None = None
    volumes: tuple[Volume, ...] = ()
    count: int = 1
    hypervisor: str | None = None
    user: str = "root"
    domain: str = ""
    #: an image in the pool (reops.systems.images): the root disk's base and how it boots
    image: str = ""


def _inline(text: str) -> dict[str, Any]:
    """`key=value` presets: count=3, ram=2048, os=debian-12, volume=data:50."""
    key, _, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if key == "volume":
        name, _, size = value.partition(":")
        if not name or not size.isdigit():
            raise MachinesError(f"bad preset {text!r}: expected volume=NAME:SIZE_GB")
        return {"volumes": [{"name": name, "size_gb": int(size)}]}
    if key not in INLINE:
        raise MachinesError(f"bad preset {text!r}: unknown key {key!r}")
    return {key: value}


def _fragments(
    name: str, custom: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...]
) -> list[dict[str, Any]]:
    if "=" in name:
        return [_inline(name)]
    if name in seen:
        raise MachinesError(f"preset {name!r} uses itself: {' -> '.join((*seen, name))}")
    table = custom.get(name, BUILTIN.get(name))
    if table is None:
        known = ", ".join(sorted({*BUILTIN, *custom}))
        raise MachinesError(f"unknown preset {name!r} (known: {known}; or KEY=VALUE)")
    out: list[dict[str, Any]] = []
    for used in table.get("use", []):
        out += _fragments(used, custom, (*seen, name))
    out.append({k: v for k, v in table.items() if k != "use"})
    return out


def resolve(
    names: Sequence[str], custom: Mapping[str, Mapping[str, Any]] | None = None, **overrides: Any
) -> Spec:
    """Compose presets (and explicit overrides such as count=2) into one Spec."""
    merged: dict[str, Any] = {}
    volumes: list[Any] = []
    frags = [f for n in names for f in _fragments(n, custom or {}, ())]
    frags.append({k: v for k, v in overrides.items() if v is not None})
    for frag in frags:
        volumes += frag.get("volumes", [])
        merged.update({k: v for k, v in frag.items() if k != "volumes"})
    merged["volumes"] = volumes
    try:
        spec = msgspec.convert(merged, Spec, strict=False)
    except msgspec.ValidationError as e:
        raise MachinesError(f"bad preset value: {e}") from None
    if spec.count < 1 or spec.cpu < 1 or spec.ram < 16 or spec.disk_gb < 0:
        raise MachinesError(
            "bad preset values: count and cpu >= 1, disk_gb >= 0 (0: diskless), ram >= 16"
        )
    return spec

"""Wake-on-LAN: start a physical machine with a magic packet (6 x 0xFF, then its MAC 16 times)."""

from __future__ import annotations

import asyncio
import socket


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet for `mac` (aa:bb:cc:dd:ee:ff, - or no separators)."""
    digits = mac.replace(":", "").replace("-", "").replace(".", "")
    if len(digits) != 12:
        raise ValueError(f"bad MAC address {mac!r}")
    raw = bytes.fromhex(digits)
    return b"\xff" * 6 + raw * 16


def parse_target(target: str) -> tuple[str, int]:
    """"host:port" (port 9, discard, by default) into an address pair."""
    host, _, port = target.rpartition(":") if ":" in target else (target, "", "9")
    return host or "255.255.255.255", int(port or 9)


async def wake(mac: str, target: str = "255.255.255.255:9") -> None:
    """Send the magic packet for `mac` to `target` (broadcast by default) over UDP."""
    packet = magic_packet(mac)
    addr = parse_target(target)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, family=socket.AF_INET, allow_broadcast=True
    )
    try:
        transport.sendto(packet, addr)
    finally:
        transport.close()

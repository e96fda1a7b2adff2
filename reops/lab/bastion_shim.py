"""Socket activation for the lab's bastion: accept on an inherited socket, `sshd -i` each.

Run as ``python -I bastion_shim.py FD -- /usr/sbin/sshd -i -e -f CONFIG``, inside the lab's
network namespace, with FD a listening socket bound in the root namespace (see
bastion.py). Standard library only: it runs by path, without reops on sys.path.

It tells the lab it is ready (``READY=1`` on ``$NOTIFY_SOCKET``, as sshd does) once it
holds the socket, so the lab waits for it exactly as for any sshd. SIGTERM ends it; the
lab stops the per-connection sshd's (its children) itself.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time


def notify_ready() -> None:
    where = os.environ.pop("NOTIFY_SOCKET", "")
    if not where:
        return
    address = "\0" + where[1:] if where.startswith("@") else where
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(b"READY=1", address)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: bastion_shim.py FD -- SSHD -i ...", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=int(argv[1]))
    listener.set_inheritable(False)
    cmd = argv[3:]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished sessions
    notify_ready()
    env = dict(os.environ)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as e:
            print(f"bastion shim: accept: {e}", file=sys.stderr, flush=True)
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)  # out of resources: back off instead of spinning
            elif e.errno not in (errno.ECONNABORTED, errno.EPERM, errno.EPROTO):
                return 1
            continue
        with conn:
            try:
                os.posix_spawn(cmd[0], cmd, env, file_actions=[
                    (os.POSIX_SPAWN_DUP2, conn.fileno(), 0),
                    (os.POSIX_SPAWN_DUP2, conn.fileno(), 1),
                ])
            except OSError as e:
                print(f"bastion shim: {cmd[0]}: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

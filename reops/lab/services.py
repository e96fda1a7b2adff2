"""The lab's services: a tiny real daemon with a SysV init script, per host.

Real non-systemd hosts (Debian without systemd, most containers) run services from
/etc/init.d scripts with start-stop-daemon and a pidfile under /run. Each lab host sees
the lab's /etc/init.d and its own private /run (hostfs.py), so `reops service start web1
webapp --sudo` starts a daemon on web1 only, and `status` on web2 still says stopped.

The daemon sleeps; SIGHUP (reload) appends a line to /run/webapp.reloads; SIGTERM ends it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

#: the lab's demo service
SERVICE = "webapp"

DAEMON = r"""#!/bin/sh
# webapp: the reops lab's demo daemon. SIGHUP: reload (noted in /run/webapp.reloads).
child=
trap 'kill $child 2>/dev/null; exit 0' TERM INT
trap 'kill $child 2>/dev/null; echo "reloaded $(date +%s)" >> /run/webapp.reloads' HUP
while :; do
  sleep 3600 & child=$!
  wait $child
done
"""

INIT_SCRIPT = r"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          webapp
# Required-Start:    $local_fs
# Required-Stop:     $local_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: the reops lab's demo daemon
### END INIT INFO
PATH=/usr/sbin:/usr/bin:/sbin:/bin
NAME=webapp
DAEMON=@DAEMON@
PIDFILE=/run/$NAME.pid

running() { [ -r "$PIDFILE" ] && [ -d "/proc/$(cat "$PIDFILE")" ]; }

case "$1" in
  start)
    running && exit 0
    start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" \
      --startas /bin/sh -- "$DAEMON" ;;
  stop)
    start-stop-daemon --stop --quiet --oknodo --retry TERM/10/KILL/5 --pidfile "$PIDFILE" \
      --remove-pidfile ;;
  restart|force-reload)
    "$0" stop && "$0" start ;;
  reload)
    running || { echo "$NAME is not running" >&2; exit 7; }
    kill -HUP "$(cat "$PIDFILE")" ;;
  status)
    if running; then echo "$NAME is running (pid $(cat "$PIDFILE"))"; exit 0; fi
    echo "$NAME is not running"; exit 3 ;;
  *)
    echo "Usage: /etc/init.d/$NAME {start|stop|restart|reload|force-reload|status}" >&2
    exit 2 ;;
esac
"""


def install(root: Path) -> None:
    """Write the daemon and its init script under `root` (bound as each host's /etc/init.d)."""
    daemon = root / "bin" / SERVICE
    daemon.parent.mkdir(parents=True, exist_ok=True)
    daemon.parent.chmod(0o755)
    daemon.write_text(DAEMON)
    daemon.chmod(0o755)
    init_d = root / "etc" / "init.d"
    init_d.mkdir(parents=True, exist_ok=True)
    init_d.chmod(0o755)
    script = init_d / SERVICE
    script.write_text(INIT_SCRIPT.replace("@DAEMON@", shlex.quote(str(daemon))))
    script.chmod(0o755)

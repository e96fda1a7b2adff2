"""The PostgreSQL wake-up (LISTEN connection) closed by its owner while a `wait` is blocked
on it, against a real PostgreSQL: the wait ends quietly, and nothing re-listens behind the
owner's back (no AttributeError on the connection `close` took, no leaked connection)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import psycopg

from reops.store.pg_conn import _PgWakeup

#: a bound on waiting for a thread to reach (or leave) a call: not a timing, a hang guard
BOUND_S = 60.0


def _in_notifies(thread: threading.Thread) -> bool:
    """Whether `thread` is blocked inside psycopg's `notifies` right now."""
    frame: Any = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "notifies":
            return True
        frame = frame.f_back
    return False


def _listeners(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         (name,)).fetchone()
    return int(row[0]) if row else 0


def test_close_during_a_wait_ends_it_without_relistening(pg_url: str) -> None:
    name = "reops-wakeup-test"
    wakeup = _PgWakeup(pg_url, "test", 5.0, name=name)
    assert _listeners(pg_url, name) == 1
    outcome: list[object] = []

    def waiter() -> None:
        try:
            outcome.append(wakeup.wait(BOUND_S * 10))
        except BaseException as e:  # what the test is about: it must not raise
            outcome.append(e)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline = time.monotonic() + BOUND_S
    while not _in_notifies(t):  # the wrong moment: the wait is blocked on the connection
        assert time.monotonic() < deadline and t.is_alive(), outcome
        time.sleep(0.01)
    wakeup.close()
    t.join(BOUND_S)
    assert not t.is_alive(), "wait still blocked after close"
    assert outcome == [False], outcome
    assert wakeup._conn is None  # closed stays closed: no LISTEN made behind close's back
    assert _listeners(pg_url, name) == 0

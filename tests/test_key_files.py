"""Key pairs made on first use by several threads and processes at once (a hub starting while
`reops agents deploy` fans out, four deploy threads asking for the hub key): every caller
gets the same whole pair, or one clear line for a damaged file — never half a key."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq
from reops_agent.keys import load_keypair

WORKERS = 6
ROUNDS = 40


def _race(directory: str, start: threading.Barrier | None, out: list[tuple[bytes, bytes]]
          ) -> None:
    if start is not None:
        start.wait()
    out.append(load_keypair(directory, "hub"))


def _in_process(directory: str, start: Any, results: Any) -> None:
    start.wait()
    try:
        results.put(load_keypair(directory, "hub"))
    except Exception as e:  # reported to the test, which fails naming it
        results.put(f"{type(e).__name__}: {e}")


def test_threads_making_a_key_pair_at_once_all_get_the_same_whole_pair(tmp_path: Path) -> None:
    for n in range(ROUNDS):
        directory = str(tmp_path / f"k{n}")
        start = threading.Barrier(WORKERS)
        got: list[tuple[bytes, bytes]] = []
        threads = [threading.Thread(target=_race, args=(directory, start, got))
                   for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == WORKERS, f"round {n}: a thread failed to load the pair"
        assert len(set(got)) == 1, f"round {n}: different pairs {set(got)}"
        public, secret = got[0]
        assert zmq.curve_public(secret) == public
        assert load_keypair(directory, "hub") == got[0]  # what is on disk


def test_processes_making_a_key_pair_at_once_all_get_the_same_whole_pair(
        tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for n in range(ROUNDS // 4):
        directory = str(tmp_path / f"p{n}")
        start = ctx.Barrier(WORKERS)
        results = ctx.Queue()
        procs = [ctx.Process(target=_in_process, args=(directory, start, results))
                 for _ in range(WORKERS)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert all(isinstance(g, tuple) for g in got), got
        assert len(set(got)) == 1, f"round {n}: different pairs {set(got)}"
        assert zmq.curve_public(got[0][1]) == got[0][0]


def test_a_damaged_secret_key_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "hub.key_secret").write_bytes(b"")
    with pytest.raises(ValueError, match=r"hub\.key_secret.*not a CurveZMQ secret key.*remove"):
        load_keypair(str(tmp_path), "hub")

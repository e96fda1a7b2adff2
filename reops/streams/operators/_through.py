"""Each item through its own run of a sub-pipeline (a step, or a few operators), with the
items in flight counted per key: the engine under `limit` and `ignoring`.

Why wrap the steps instead of marking a point in the pipeline: a ReactiveX operator sees
items go by but never learns when the rest of the pipeline is done with one (there is no
acknowledgement). Running the wrapped steps per item gives the slot a clear end: the item's
own sub-pipeline completed (its step's Result came, or it was passed through).
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import reactivex
from reactivex import abc

from reops.streams.operators._keyed import Keyed
from reops.streams.operators._keys import KeyOf
from reops.streams.operators.then import then
from reops.streams.stream import Operator, Stream

#: what a wrapper runs: operators (`then(step)`, `retry(…)`) or plain steps (run with `then`)
Steps = Operator | Callable[..., Any]
Chain = Callable[[Stream], Stream]


def chain_of(steps: tuple[Steps, ...], what: str) -> Chain:
    """The sub-pipeline: each operator in turn; a plain step `fn` is `then(fn)`."""
    if not steps:
        raise ValueError(f"{what}: give the step(s) to run inside, e.g. {what}(…, restart) "
                         f"or {what}(…, then(a), then(b))")
    for s in steps:
        if not isinstance(s, Operator) and not callable(s):
            raise ValueError(f"{what}: {s!r} is neither an operator nor a step")
    operators = [s if isinstance(s, Operator) else then(s) for s in steps]

    def chain(one: Stream) -> Stream:
        return functools.reduce(lambda acc, op: acc | op, operators, one)

    return chain


class Through(Keyed):
    """One subscription: at most `capacity` items per key in flight (the rest wait, in
    order), or with `ignore`, items of a key in flight (or within `grace` after) dropped."""

    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 up: Stream, chain: Chain, key_fn: KeyOf | None, *,
                 capacity: int | None = None, ignore: bool = False,
                 grace: float = 0.0) -> None:
        super().__init__(observer, scheduler)
        self.up = up
        self.chain = chain
        self.key_fn = key_fn
        self.capacity = capacity
        self.ignore = ignore
        self.grace = grace
        self.running: dict[Hashable, int] = {}
        self.waiting: dict[Hashable, deque[Any]] = {}
        self.inner: dict[int, abc.DisposableBase] = {}
        self.ready: deque[tuple[Hashable, Any]] = deque()
        self.slots = itertools.count()
        self.draining = False
        self.upstream_done = False

    def __len__(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.timers)

    def acting(self, k: Hashable) -> bool:
        """Whether key `k` is being acted on (or was, within the grace period)."""
        return k in self.running or k in self.timers

    def on_item(self, item: Any) -> None:
        k = self.key_fn(item) if self.key_fn is not None else None
        if self.ignore and self.acting(k):
            return  # caused by our own action on this key (or its aftermath): ignored
        if self.capacity is not None and self.running.get(k, 0) >= self.capacity:
            self.waiting.setdefault(k, deque()).append(item)
            return
        self.running[k] = self.running.get(k, 0) + 1
        self.ready.append((k, item))
        self._drain()

    def _drain(self) -> None:
        """Start the ready items one after another (never recursively: a step that ends
        at once hands its slot on without growing the stack)."""
        if self.draining:
            return
        self.draining = True
        try:
            while self.ready and not self.closed:
                self._start(*self.ready.popleft())
        finally:
            self.draining = False

    def _start(self, k: Hashable, item: Any) -> None:
        slot = next(self.slots)
        one = Stream(reactivex.just(item), self.up.hosts, self.up.rebuild,
                     replay=self.up.replay, shared=False)
        ended = [False]

        def on_inner(x: Any) -> None:
            with self.lock:
                if not self.closed:
                    self.observer.on_next(x)

        def on_error(exc: Exception) -> None:
            with self.lock:
                self.fail(exc)

        def on_done() -> None:
            with self.lock:
                if ended[0] or self.closed:
                    return
                ended[0] = True
                self.inner.pop(slot, None)
                self._release(k)

        sub = self.chain(one).observable.subscribe(on_inner, on_error, on_done)
        if not ended[0] and not self.closed:
            self.inner[slot] = sub

    def _release(self, k: Hashable) -> None:
        queue = self.waiting.get(k)
        if queue:  # the slot goes to the key's next waiting item
            item = queue.popleft()
            if not queue:
                del self.waiting[k]
            self.ready.append((k, item))
            self._drain()
            return
        left = self.running[k] - 1
        if left:
            self.running[k] = left
        else:
            del self.running[k]
            if self.ignore and self.grace > 0:
                self.set_timer(k, self.grace, _grace_over)
        self._maybe_complete()

    def on_completed(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.upstream_done = True
            self._maybe_complete()

    def _maybe_complete(self) -> None:
        if (self.upstream_done and not self.closed and not self.running
                and not self.waiting and not self.ready):
            self.close()
            self.observer.on_completed()

    def close(self) -> None:
        with self.lock:
            inner, self.inner = self.inner, {}
            self.running, self.waiting = {}, {}
            self.ready.clear()
        super().close()
        for sub in inner.values():
            sub.dispose()


def _grace_over() -> None:
    """A key's grace period ended: its events count as the world's again."""

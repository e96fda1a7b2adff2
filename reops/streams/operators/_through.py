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

from reops.streams.operators._keyed import Keyed, Notice
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


class Overflowed(Notice, frozen=True, kw_only=True):
    """`limit`'s waiting queue of `key` (None: a limit over all items) was full at `since`:
    from then on each new item pushes out the key's oldest waiting one, until the queue
    has emptied (`Drained`). On the bus it is `event.flow.overflowed`."""

    limit: str
    key: Any = None
    max_queue: int
    since: float
    time: float
    source: str = "flow"
    kind: str = "overflowed"


class Drained(Notice, frozen=True, kw_only=True):
    """The waiting queue of `key` that overflowed at `since` has emptied at `time`; `dropped`
    waiting items were pushed out meanwhile. On the bus it is `event.flow.drained`."""

    limit: str
    key: Any = None
    dropped: int
    since: float
    time: float
    source: str = "flow"
    kind: str = "drained"


class Through(Keyed):
    """One subscription: at most `capacity` items per key in flight (the rest wait, in
    order, at most `max_queue` per key), or with `ignore`, items of a key in flight (or
    within `grace` after) dropped."""

    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 up: Stream, chain: Chain, key_fn: KeyOf | None, *,
                 capacity: int | None = None, max_queue: int = 0, name: str = "",
                 ignore: bool = False, grace: float = 0.0) -> None:
        super().__init__(observer, scheduler)
        self.up = up
        self.chain = chain
        self.key_fn = key_fn
        self.capacity = capacity
        self.max_queue = max_queue
        self.name = name
        self.ignore = ignore
        self.grace = grace
        self.running: dict[Hashable, int] = {}
        self.waiting: dict[Hashable, deque[Any]] = {}
        #: per key whose queue overflowed and has not emptied yet: (since, dropped)
        self.overflow: dict[Hashable, tuple[float, int]] = {}
        self.inner: dict[int, abc.DisposableBase] = {}
        self.ready: deque[tuple[Hashable, Any]] = deque()
        self.slots = itertools.count()
        self.draining = False
        self.upstream_done = False

    def __len__(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.deadlines)

    def acting(self, k: Hashable) -> bool:
        """Whether key `k` is being acted on (or was, within the grace period)."""
        return k in self.running or k in self.deadlines

    def on_item(self, item: Any) -> None:
        k = self.key_fn(item) if self.key_fn is not None else None
        if self.ignore and self.acting(k):
            return  # caused by our own action on this key (or its aftermath): ignored
        if self.capacity is not None and self.running.get(k, 0) >= self.capacity:
            self._wait(k, item)
            return
        self.running[k] = self.running.get(k, 0) + 1
        self.ready.append((k, item))
        self._drain()

    def _wait(self, k: Hashable, item: Any) -> None:
        """`item` waits for a slot of `k`; a full queue drops its oldest, counted."""
        queue = self.waiting.get(k)
        if queue is None:
            queue = self.waiting[k] = deque()
        if len(queue) < self.max_queue:
            queue.append(item)
            return
        if queue:  # the oldest waiting item makes room (the newest is the freshest news)
            queue.popleft()
            queue.append(item)
        else:  # max_queue=0: nothing waits, the item itself is dropped
            del self.waiting[k]
        episode = self.overflow.get(k)
        if episode is not None:
            self.overflow[k] = (episode[0], episode[1] + 1)
            return
        t = self.now()
        self.overflow[k] = (t, 1)
        self.observer.on_next(Overflowed(limit=self.name, key=k, max_queue=self.max_queue,
                                         since=t, time=t))

    def _drained(self, k: Hashable) -> None:
        """`k`'s queue emptied: if it overflowed, say how many it dropped."""
        episode = self.overflow.pop(k, None)
        if episode is not None:
            self.observer.on_next(Drained(limit=self.name, key=k, dropped=episode[1],
                                          since=episode[0], time=self.now()))

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
                self._drained(k)
            self.ready.append((k, item))
            self._drain()
            return
        left = self.running[k] - 1
        if left:
            self.running[k] = left
        else:
            del self.running[k]
            if k in self.overflow:  # max_queue=0: nothing waited, the episode ends here
                self._drained(k)
            if self.ignore and self.grace > 0:
                self.arm(k, self.grace)  # its events count as the world's again after it
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
            self.running, self.waiting, self.overflow = {}, {}, {}
            self.ready.clear()
        super().close()
        for sub in inner.values():
            sub.dispose()

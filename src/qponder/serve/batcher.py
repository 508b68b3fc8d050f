"""Dynamic batching: requests that can share one model call are grouped for a short window, then run together.

Why: a VLM forward/generate over 8 images costs far less than 8 calls of one image, but HTTP requests arrive one at
a time. The batcher holds each request for at most ``window_ms`` (measured from the oldest waiting request, so a
request that already waited behind a running batch is not delayed further) and groups up to ``max_batch`` requests
with the same *key* (requests with different keys — other sampling settings, another prompt — can never share a
call).

All model work runs in ONE dedicated worker thread: torch generation is not safe to re-enter from several threads in
the way we use it, and a single GPU gains nothing from it. The event loop only queues, groups and hands out results.

The queue is bounded (``max_queue`` waiting requests): when full, ``submit`` raises ``QueueFull`` at once, so an
overloaded server answers 503 instead of growing memory and latency without limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: run_batch(key, payloads) -> one result per payload; an Exception instance in the list fails only that request.
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the request queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0  # requests answered with a result
    failed: int = 0  # requests answered with an exception
    rejected: int = 0  # QueueFull
    batches: int = 0
    max_batch_size: int = 0
    batch_sizes: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The counters /health reports."""
        return {
            "requests_submitted": self.submitted, "requests_served": self.completed,
            "requests_failed": self.failed, "requests_rejected": self.rejected,
            "batches_run": self.batches, "max_batch_size_seen": self.max_batch_size,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "mean_batch_size": (sum(k * v for k, v in self.batch_sizes.items()) / self.batches
                                if self.batches else 0.0),
            "busy_seconds": round(self.busy_seconds, 3),
        }


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    arrived: float
    seq: int


class DynamicBatcher:
    """Group compatible requests (same key) into batches of at most ``max_batch`` and run them in one thread."""

    def __init__(self, run_batch: RunBatch, *, max_batch: int = 8, window_ms: float = 5.0, max_queue: int = 128):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._waiting = 0
        self._in_flight = 0
        self._seq = 0
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qponder-model")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="qponder-batcher")

    async def close(self) -> None:
        """Stop taking requests, finish every queued and running batch, then stop the worker thread."""
        self._closing = True
        if self._task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    @property
    def waiting(self) -> int:
        """Requests queued and not yet handed to the worker."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests in the batch the worker is running now."""
        return self._in_flight

    @property
    def closing(self) -> bool:
        return self._closing

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the queued batches times the mean batch time, at least 1."""
        per_batch = self.stats.busy_seconds / self.stats.batches if self.stats.batches else 1.0
        return max(1, math.ceil(per_batch * (self._waiting / self.max_batch + 1)))

    # -- submitting ------------------------------------------------------------------------------------------------
    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue one request and wait for its result (or its exception)."""
        if self._closing:
            raise BatcherClosed("the server is shutting down")
        if self._task is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        if self._task.done():  # never queue behind a dispatcher that is gone: the request would wait forever
            raise RuntimeError("the batcher's dispatcher has stopped")
        if self._waiting >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        self._seq += 1
        item = _Item(key=key, payload=payload, future=loop.create_future(), arrived=loop.time(), seq=self._seq)
        self._queues.setdefault(key, deque()).append(item)
        self._waiting += 1
        self.stats.submitted += 1
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    # -- the dispatcher --------------------------------------------------------------------------------------------
    async def _wait_for_wakeup(self, timeout: float | None) -> bool:
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                if self._closing:
                    return
                await self._wait_for_wakeup(None)
                continue
            # Oldest request first (FIFO across keys), then fill its batch during the rest of its window.
            key = min(self._queues, key=lambda k: self._queues[k][0].seq)
            queue = self._queues[key]
            deadline = queue[0].arrived + self.window
            while len(queue) < self.max_batch and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._wait_for_wakeup(remaining):
                    break
            items = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            if not queue:
                del self._queues[key]
            self._waiting -= len(items)
            items = [it for it in items if not it.future.done()]  # a disconnected client's request was cancelled
            if items:
                await self._run(key, items)

    async def _run(self, key: Hashable, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        n = len(items)
        self._in_flight = n
        self.stats.batches += 1
        self.stats.batch_sizes[n] += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, n)
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._call, key, [it.payload for it in items])
        except asyncio.CancelledError:  # the loop is being torn down: let the waiting requests go, then stop
            for it in items:
                it.future.cancel()
            raise
        except Exception as e:  # only a bug in _call itself lands here; answer everyone rather than hang
            log.exception("batch worker failed")
            results = [e] * n
        finally:
            self.stats.busy_seconds += time.perf_counter() - t0
            self._in_flight = 0
        for it, res in zip(items, results):
            if it.future.done():
                continue
            if isinstance(res, BaseException):
                self.stats.failed += 1
                it.future.set_exception(res)
            else:
                self.stats.completed += 1
                it.future.set_result(res)

    def _call(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """Worker thread: run the batch; if it fails as a whole, run its requests one by one to isolate the culprit."""
        try:
            out = list(self.run_batch(key, payloads))
            if len(out) != len(payloads):
                raise RuntimeError(f"run_batch returned {len(out)} results for {len(payloads)} requests")
            return out
        except Exception as e:
            if len(payloads) == 1:
                return [e]
            log.warning("a batch of %d failed (%s: %s); retrying its requests one by one",
                        len(payloads), type(e).__name__, e)
        out = []
        for p in payloads:
            try:
                res = list(self.run_batch(key, [p]))
                out.append(res[0] if len(res) == 1 else RuntimeError("run_batch returned a wrong result count"))
            except Exception as e:
                out.append(e)
        return out

"""Dynamic batching: many small requests, one engine call per batch, a bounded queue.

One engine thread runs batches; the event loop queues requests. When the engine is free it takes
everything queued (up to ``max_batch`` rows), so under load batches grow by themselves while a
lone request never waits for company: the batcher only holds a batch back (at most
``max_delay_s`` after its oldest request arrived) when the previous batch was bigger and ended
moments ago, that is, when more requests are demonstrably on their way. The queue is bounded in
rows: a full queue refuses at once (the server answers 503 with Retry-After) instead of growing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Outputs = dict[str, np.ndarray]


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` rows already, or the server is shutting down."""


@dataclass
class _Item:
    feeds: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future[Outputs]
    arrived: float


class Batcher:
    """Queue requests of ``rows`` images each; run them in batches through ``run(feeds)``."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], Outputs],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay_s >= 0")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._run = run
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="m3trt-engine")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_rows = 1
        self._last_end = 0.0
        self._last_run_s = 0.0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def check_room(self, rows: int = 1) -> None:
        """Raise QueueFull now if ``rows`` more would not fit, so the server can refuse a
        request before it reads the body (under overload, bodies are where memory goes)."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self._queued_rows + rows > self.max_queue:
            raise QueueFull(f"the queue is full ({self._queued_rows} images waiting)")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="m3trt-batcher")

    async def submit(self, feeds: Mapping[str, np.ndarray], rows: int) -> Outputs:
        """Queue one request and wait for its rows of every output."""
        if not 1 <= rows <= self.max_batch:
            raise ValueError(f"a request may hold 1 to {self.max_batch} images, not {rows}")
        self.check_room(rows)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(feeds, rows, future, time.perf_counter()))
        self._queued_rows += rows
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, stop the engine thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _serve(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._hold_for_more()
            items = self._take()
            if items:
                await self._run_batch(items)

    async def _hold_for_more(self) -> None:
        """Wait for the batch to fill only while the last, bigger batch says more are coming."""
        now = time.perf_counter()
        busy = now - self._last_end <= max(self._last_run_s, self.max_delay_s)
        target = min(self.max_batch, self._last_rows) if busy else 1
        deadline = self._queue[0].arrived + self.max_delay_s
        while self._queued_rows < target and not self._closing:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        rows = 0
        while self._queue and rows + self._queue[0].rows <= self.max_batch:
            item = self._queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # the client gave up (timeout) while it was queued
                continue
            items.append(item)
            rows += item.rows
        return items

    async def _run_batch(self, items: list[_Item]) -> None:
        names = items[0].feeds.keys()
        if len(items) == 1:
            feeds = dict(items[0].feeds)
        else:
            feeds = {n: np.concatenate([it.feeds[n] for it in items]) for n in names}
        rows = sum(it.rows for it in items)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, feeds)
        except Exception as exc:  # the engine failed: every request of the batch hears why
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self._last_end = time.perf_counter()
            self._last_run_s = self._last_end - start
            self._last_rows = rows
        if self._on_batch is not None:
            self._on_batch(rows, self._last_run_s)
        offset = 0
        for it in items:
            if not it.future.done():
                it.future.set_result({k: v[offset : offset + it.rows] for k, v in outputs.items()})
            offset += it.rows

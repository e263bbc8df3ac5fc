"""POST /events batches, validated and logged in a process of their own beside each serving worker.

Taking a batch costs ~25 ms of CPU per 100 events (the ingest rules, the log's append), much of it holding the
interpreter lock. In the serving worker, a /recommend arriving meanwhile waited for it: p99 11-23 ms under
1,000 events/s against 3.4 ms without (docs/benchmarks.md, real time). Here the worker only waits on a pipe,
and the answer still comes once the events are in the log. Concurrent batches are taken together
(`GroupCommit`). The process exits when its worker dies; a dead one is replaced, and the batches it had are
answered 503 (nothing acknowledged: the client sends them again, and a resent event is a duplicate).
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from propel.config import Workspace
from propel.lake import events_log, intake
from propel.serving import event_metrics

_ws: Workspace | None = None  # in the intake process: its workspace and open event log
_log = None


def _start(root: str) -> None:
    """The intake process's start: open the log, and exit when the serving worker that started it dies (a
    `kill -9` of the worker leaves no orphan holding the log)."""
    global _ws, _log
    _ws = Workspace.resolve(root)
    _log = events_log.open_log(_ws)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def take(batches: list[list]) -> tuple[list[list[dict]], collections.Counter]:
    """Validate and log several requests' events as one batch: the answer of each request, and the /metrics
    counts (the worker, whose counters Prometheus scrapes, adds them)."""
    events = [e for batch in batches for e in batch]
    checked = intake.validate(_ws, events)
    accepted = [r for r in checked if r["status"] == "accepted"]
    added = _log.append([r["event"] for r in accepted], [r["mapped"] for r in accepted])
    answers, start = [], 0
    for batch in batches:
        results = []
        for i, (raw, r) in enumerate(zip(batch, checked[start:start + len(batch)])):
            event_id = r["event"]["event_id"] if "event" in r else raw.get("event_id") if isinstance(raw, dict) else None
            status = r["status"] if r["status"] != "accepted" or event_id in added else "duplicate"
            result = {"index": i, "event_id": None if event_id is None else str(event_id), "status": status}
            if status == "rejected":
                result.update(field=r.get("field"), reason=r.get("reason"))
            elif status == "accepted":
                result["customer_id"] = added[event_id]
            results.append(result)
        answers.append(results)
        start += len(batch)
    return answers, event_metrics.keys(events, checked, [r for results in answers for r in results])


class IntakeProcess:
    """The worker's side: one intake process, started at once (its imports take a second or two)."""

    def __init__(self, ws: Workspace):
        self.root = str(ws.root)
        self.pool = self._spawn()
        self.pool.submit(_ready).result()

    def _spawn(self) -> ProcessPoolExecutor:
        # spawn, not fork: a serving worker has threads, and a fork copies their locks in whatever state
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                   initargs=(self.root,))

    async def take(self, batches: list[list]) -> list[list[dict]]:
        pool = self.pool
        try:
            answers, keys = await asyncio.get_running_loop().run_in_executor(pool, take, batches)
        except BrokenProcessPool:
            if self.pool is pool:
                self.pool = self._spawn()
            raise
        event_metrics.add(keys)
        return answers

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return _log is not None


class GroupCommit:
    """The POST /events batches that arrive while one is being taken are taken together, as one: a batch's
    cost is mostly fixed (planning the staging query, one fsync), so merging concurrent batches multiplies
    throughput under load and costs nothing when requests come one at a time."""

    def __init__(self, take, most: int):
        self.take, self.most = take, most  # async take(list of batches) -> their results; most events at once
        self.waiting: list[tuple[list, asyncio.Future]] = []
        self.running = False

    async def submit(self, events: list) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((events, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                group, n = [], 0
                while self.waiting and (not group or n + len(self.waiting[0][0]) <= self.most):
                    group.append(self.waiting.pop(0))
                    n += len(group[-1][0])
                try:
                    results = await self.take([events for events, _ in group])
                except Exception as exc:  # noqa: BLE001 - each request answers it (503)
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(group, results):
                        if not future.done():  # the client may have gone
                            future.set_result(result)
        finally:
            self.running = False

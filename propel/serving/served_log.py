"""The served-recommendations log: every answer of POST /recommend (recommendation_id, customer_id, the
items in the order shown, model, model version, fallback, time), and every list of a batch run (`propel
score recommender`), so that analytics can count what was served and match the clicks and purchases that
come back with a `recommendation_id`.

Each server process appends JSON lines to its own file per UTC day, `<workspace>/data/served_recommendations/
<day>-<host>-<pid>.jsonl`, so workers never share a file or a lock. On the request path `record()` only
puts the answer on a queue; a daemon thread writes the queue every FLUSH_SECONDS in one append per file,
and `close()` writes the rest at shutdown. A crash loses at most the last FLUSH_SECONDS of the log, and a
half-written last line is skipped by `read()`. A batch run writes its lists as Parquet files
(`batch-<run>-<part>.parquet`, same columns). Nothing else about the customer is logged (the id as the
caller sent it; no contact data, no request headers), and nothing about a customer `propel forget` has
tombstoned by the time the queue is written.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propel.config import Workspace
from propel.lake.tombstones import customer_key

FLUSH_SECONDS = 1.0  # the writer thread appends the queued answers this often
COLUMNS = {"recommendation_id": "VARCHAR", "served_at": "TIMESTAMPTZ", "customer_id": "VARCHAR",
           "items": "VARCHAR[]", "explored": "BOOLEAN[]", "model": "VARCHAR", "model_version": "VARCHAR",
           "fallback": "BOOLEAN", "fallback_reason": "VARCHAR", "source": "VARCHAR"}
log = logging.getLogger("propel.serving")


def _row(served_at: float, answer: dict) -> dict:
    """One log line from a /recommend answer (positions are the order of `items`, 1 first)."""
    return {"recommendation_id": answer["recommendation_id"],
            "served_at": datetime.fromtimestamp(served_at, timezone.utc).isoformat(timespec="milliseconds"),
            "customer_id": answer["customer_id"], "items": [i["item_id"] for i in answer["items"]],
            "explored": [i["explored"] for i in answer["items"]], "model": answer["model"],
            "model_version": None if answer["model_version"] is None else str(answer["model_version"]),
            "fallback": answer["fallback"], "fallback_reason": answer["fallback_reason"], "source": "api"}


class ServedLog:
    """Appends /recommend answers to this process's log file, off the request path."""

    def __init__(self, ws: Workspace, flush_seconds: float = FLUSH_SECONDS,
                 forgotten: Callable[[], frozenset[str]] = frozenset):
        self.folder, self.flush_seconds = ws.served_log, flush_seconds
        self.forgotten = forgotten  # the tombstones now: answers to forgotten customers are never written
        self.queue: deque = deque()  # (time, answer); append and popleft are thread-safe
        self.stop = threading.Event()
        self.writer: threading.Thread | None = None
        self.name = f"{socket.gethostname()}-{os.getpid()}.jsonl"

    def record(self, answer: dict) -> None:
        """Queue one answer (the response body of /recommend); written within flush_seconds."""
        self.queue.append((time.time(), answer))
        if self.writer is None:  # started by the first request, in the worker process that serves it
            self.writer = threading.Thread(target=self._run, name="served-log", daemon=True)
            self.writer.start()

    def _run(self) -> None:
        while not self.stop.wait(self.flush_seconds):
            self.flush()

    def flush(self) -> int:
        """Append everything queued so far; returns how many answers were written."""
        batch = [self.queue.popleft() for _ in range(len(self.queue))]
        stones = self.forgotten()  # checked at writing time: `propel forget` may have run since the answer
        if stones:
            batch = [(t, a) for t, a in batch if customer_key(a["customer_id"]) not in stones]
        by_day: dict[str, list[str]] = {}
        for n, (served_at, answer) in enumerate(batch, 1):
            day = time.strftime("%Y-%m-%d", time.gmtime(served_at))
            by_day.setdefault(day, []).append(json.dumps(_row(served_at, answer)) + "\n")
            if n % 64 == 0:  # ~15 us per answer: hand the GIL to the event loop every millisecond or so
                time.sleep(0)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for day, lines in by_day.items():
                with (self.folder / f"{day}-{self.name}").open("a") as fh:
                    fh.write("".join(lines))
        except OSError as exc:  # a full or read-only disk must not take the service down: say so, drop the batch
            log.warning("served-recommendations log: %d answers not written: %s", len(batch), exc)
            return 0
        return len(batch)

    def close(self) -> None:
        self.stop.set()
        if self.writer is not None:
            self.writer.join(timeout=5)
        self.flush()


def write_batch(ws: Workspace, recs: pd.DataFrame, run: str, part: int, model: str, version: str) -> None:
    """Log one chunk of batch recommendations (rows of one customer together, in rank order, with their
    recommendation_id) as one row per list."""
    ids = recs["recommendation_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    offsets = pa.array(np.r_[starts, len(ids)], pa.int32())
    first = recs.iloc[starts]
    table = pa.table({
        "recommendation_id": first["recommendation_id"].to_numpy(object),
        "served_at": pa.array([datetime.now(timezone.utc)] * len(starts), pa.timestamp("us", "UTC")),
        "customer_id": first["customer_id"].astype(str).to_numpy(object),
        "items": pa.ListArray.from_arrays(offsets, pa.array(recs["item_id"].astype(str).to_numpy(object))),
        "explored": pa.ListArray.from_arrays(offsets, pa.array(recs["explored"].to_numpy(bool))),
        "model": np.where(first["fallback"].notna(), "popular", model), "model_version": [version] * len(starts),
        "fallback": first["fallback"].notna().to_numpy(), "fallback_reason": first["fallback"].to_numpy(object),
        "source": ["batch"] * len(starts)})
    ws.served_log.mkdir(parents=True, exist_ok=True)
    path = ws.served_log / f"batch-{run}-{part:05d}.parquet"
    pq.write_table(table, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # readers never see half a file


def read(ws: Workspace) -> pd.DataFrame | None:
    """Every logged recommendation (one row each; `items` in the order shown), or None without a log."""
    lines, batches = sorted(ws.served_log.glob("*.jsonl")), sorted(ws.served_log.glob("*.parquet"))
    if not lines and not batches:
        return None
    types = ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items())
    columns = ", ".join(f"CAST({k} AS {v}) AS {k}" for k, v in COLUMNS.items())
    parts = [f"""SELECT * FROM read_json([{", ".join(f"'{p}'" for p in lines)}], format = 'newline_delimited',
                                         columns = {{{types}}}, ignore_errors = true)"""] if lines else []
    parts += [f"SELECT {columns} FROM read_parquet([{', '.join(repr(str(p)) for p in batches)}])"] if batches else []
    return duckdb.sql(f"""SELECT * FROM ({" UNION ALL ".join(parts)})
                          WHERE recommendation_id IS NOT NULL ORDER BY served_at, recommendation_id""").df()


def forget(ws: Workspace, customer_ids: set[str]) -> int:
    """Remove every recommendation served to these customers from the log (`propel forget`); returns how
    many. A server appending at the same moment may lose that second's lines, never keep the person's."""
    removed = 0
    for path in sorted(ws.served_log.glob("*.jsonl")):
        lines = path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if _customer(line) not in customer_ids]
        if len(keep) < len(lines):
            path.with_suffix(".tmp").write_text("".join(keep))
            path.with_suffix(".tmp").replace(path)
            removed += len(lines) - len(keep)
    for path in sorted(ws.served_log.glob("*.parquet")):
        table = pq.read_table(path)
        mask = pc.is_in(table["customer_id"], pa.array(sorted(customer_ids), pa.string()))
        if pc.any(mask).as_py():
            pq.write_table(table.filter(pc.invert(mask)), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
            removed += pc.sum(mask).as_py()
    return removed


def _customer(line: str) -> str | None:
    try:
        return json.loads(line).get("customer_id")
    except ValueError:  # a torn line: left as it is (read() skips it)
        return None

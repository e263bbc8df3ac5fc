"""Real-time customer features: the stream consumer folds the event log (POST /events, propel/lake/events_log.py)
into per-profile state and writes the `customer_realtime` view (propel/featurestore/repo, a Feast push source) to
the online store with Propel's writer (propel/featurestore/online_write.py: the bytes Feast's push would store, ~3x
faster, Feast's push itself where it cannot), so Feast reads it as its own.

Exactly once: each step folds the events after the committed offset into the states of the profiles they touch,
pushes those profiles' rows, then commits the states and the new offset in one transaction (SQLite under
ws.stream, or Redis for the Redis backend), only if the offset is still the one it started from. A pushed row
is a value, not an increment, so a crash between push and commit re-folds the same events from the same state
and pushes the same row again: nothing is lost or counted twice. One consumer runs per machine (`claim`); should
two race (two machines on one Redis), the loser's commit fails, and its push, older than the winner's rows,
is refused by Feast's Redis store (a row replaces only an older one: see `fold`'s stamp).

Windows end at the profile's newest event (the row's timestamp), not at the wall clock, so a fold gives the same
state whenever and however often it runs; entries older than the longest window before that are dropped, so a
profile's state is bounded by its last day of events plus `recent_items` items. A login's `merged_from` folds the
anonymous profile's state into the person's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from propel.config import Workspace
from propel.featurestore import online_write
from propel.lake.events_log import durable_sqlite, open_log, redis_client
from propel.lake.tables import crash_point

log = logging.getLogger(__name__)
VIEW, PUSH_SOURCE, SERVICE = "customer_realtime", "customer_realtime_push", "realtime_v1"
WINDOWS = {"1h": 3600.0, "24h": 86400.0}
KEEP = max(WINDOWS.values())
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
COUNTED = {"events": None, "purchases": "purchase", "carts": "add_to_cart"}  # feature -> event type (None: any)


class Conflict(Exception):
    """Another consumer committed since this one read the offset: its step is dropped and redone."""


class NotApplied(Exception):
    """The online store has no real-time view yet."""


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _remember(items: list, t: float, item: str, n: int) -> None:
    """Keep the n distinct items seen last as [newest time, item], oldest first."""
    t = max([t] + [x[0] for x in items if x[1] == item])
    items[:] = sorted([x for x in items if x[1] != item] + [[t, item]])[-n:]


def fold(state: dict | None, event: dict, recent: int) -> dict:
    """One logged event into its profile's state (JSON-able)."""
    s = state or {"last": None, "last_purchase": None, "window": [], "views": [], "bought": [], "stamp": 0}
    t, kind, item = _seconds(event["ts"]), event["event_type"], event.get("item_id")
    s["last"] = t if s["last"] is None else max(s["last"], t)
    if kind == "purchase":
        s["last_purchase"] = t if s["last_purchase"] is None else max(s["last_purchase"], t)
    s["window"] = [w for w in [*s["window"], [t, kind, event.get("session_id")]] if w[0] > s["last"] - KEEP]
    if item is not None and kind in ("product_view", "purchase"):
        _remember(s["views" if kind == "product_view" else "bought"], t, item, recent)
    # the row's timestamp (microseconds): the newest event's, moved on by 1 us when an event changes the row without
    # a newer time (a late one), since Feast's Redis store keeps a row only over an older one
    s["stamp"] = max(round(s["last"] * 1e6), s["stamp"] + 1)
    return s


def merge(into: dict | None, other: dict, recent: int) -> dict:
    """A merged-away (anonymous) profile's state folded into the person's."""
    if into is None:
        return other
    last = max(into["last"], other["last"])
    purchases = [p for p in (into["last_purchase"], other["last_purchase"]) if p is not None]
    out = {"last": last, "last_purchase": max(purchases) if purchases else None,
           "window": [w for w in into["window"] + other["window"] if w[0] > last - KEEP], "views": [], "bought": [],
           "stamp": max(into["stamp"], other["stamp"])}
    for key in ("views", "bought"):
        for t, item in sorted(into[key] + other[key]):
            _remember(out[key], t, item, recent)
    return out


def row(profile_id: str, s: dict) -> dict:
    """The profile's `customer_realtime` row (propel.features.definitions.REALTIME_FEATURES)."""
    out = {"customer_id": profile_id, "event_timestamp": EPOCH + timedelta(microseconds=s["stamp"]),
           "last_event_ts": s["last"], "last_purchase_ts": np.nan if s["last_purchase"] is None else s["last_purchase"]}
    for name, seconds in WINDOWS.items():
        inside = [w for w in s["window"] if w[0] > s["last"] - seconds]
        for feature, kind in COUNTED.items():
            out[f"{feature}_{name}"] = sum(kind is None or w[1] == kind for w in inside)
        out[f"sessions_{name}"] = len({w[2] for w in inside if w[2] is not None})
    out["recent_views"] = [item for _, item in reversed(s["views"])]
    out["recent_purchases"] = [item for _, item in reversed(s["bought"])]
    return out


class SQLiteState:
    """Profile states and the committed offset in one SQLite file (WAL, synchronous=FULL: a commit survives kill -9)."""

    def __init__(self, path):
        self.db = durable_sqlite(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS state (profile_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def offset(self) -> tuple[str, object] | None:
        found = self.db.execute("SELECT value FROM meta WHERE key = 'offset'").fetchone()
        return tuple(json.loads(found[0])) if found else None

    def load(self, ids: list[str]) -> dict[str, dict]:
        rows = self.db.execute(f"SELECT profile_id, body FROM state WHERE profile_id IN ({','.join('?' * len(ids))})", ids)
        return {p: json.loads(b) for p, b in rows}

    def commit(self, expected, new: tuple, states: dict[str, dict], gone: set[str], reset: bool = False) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.offset() != expected:
                raise Conflict()
            if reset:
                self.db.execute("DELETE FROM state")
            self.db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", [(p, json.dumps(s)) for p, s in states.items()])
            self.db.executemany("DELETE FROM state WHERE profile_id = ?", [(p,) for p in gone])
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('offset', ?)", (json.dumps(list(new)),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


class RedisState:
    """As SQLiteState, in Redis: a hash of states and the offset key, changed in one MULTI/EXEC that WATCHes the offset."""

    KEY = "propel:realtime"

    def __init__(self, url: str):
        self.client = redis_client(url)

    def offset(self, client=None) -> tuple[str, object] | None:
        found = (client or self.client).get(self.KEY + ":offset")
        return tuple(json.loads(found)) if found else None

    def load(self, ids: list[str]) -> dict[str, dict]:
        return {p: json.loads(b) for p, b in zip(ids, self.client.hmget(self.KEY + ":state", ids)) if b}

    def commit(self, expected, new: tuple, states: dict[str, dict], gone: set[str], reset: bool = False) -> None:
        import redis

        with self.client.pipeline() as pipe:
            try:
                pipe.watch(self.KEY + ":offset")
                if self.offset(pipe) != expected:
                    raise Conflict()
                pipe.multi()
                if reset:
                    pipe.delete(self.KEY + ":state")
                if states:
                    pipe.hset(self.KEY + ":state", mapping={p: json.dumps(s) for p, s in states.items()})
                if gone:
                    pipe.hdel(self.KEY + ":state", *gone)
                pipe.set(self.KEY + ":offset", json.dumps(list(new)))
                pipe.execute()
            except redis.WatchError:
                raise Conflict() from None

    def close(self) -> None:
        self.client.close()


class Consumer:
    """Folds the event log into real-time features, step by step (see the module docstring)."""

    def __init__(self, ws: Workspace):
        from feast.errors import FeatureViewNotFoundException

        from propel.featurestore.store import feature_store

        self.cfg = ws.settings().stream
        self.store = feature_store(ws)
        try:
            self.view = self.store.get_feature_view(VIEW)
        except FeatureViewNotFoundException:
            raise NotApplied(f"the online store has no {VIEW} view: run `propel features apply`") from None
        self.schema = pq.read_schema(self.view.batch_source.path)  # the rows' columns and types
        self.log = open_log(ws)
        self.state = RedisState(self.cfg.redis_url) if self.cfg.backend == "redis" else SQLiteState(ws.stream / "realtime.db")

    def step(self) -> int:
        """Fold, push and commit the next events (at most stream.consume_batch); how many (0: none new)."""
        from feast.data_source import PushMode

        committed = self.state.offset()
        reset = committed is None or committed[0] != self.log.log_id  # a new log: states of another one dropped
        after = self.log.start if reset else committed[1]
        batch = self.log.read(after, self.cfg.consume_batch)
        if not batch:
            return 0
        touched = {e["profile_id"] for _, e in batch} | {m for _, e in batch for m in e.get("merged_from") or ()}
        states = {} if reset else self.state.load(sorted(touched))
        gone = set()
        for _, event in batch:
            profile = event["profile_id"]
            for old in event.get("merged_from") or ():
                if old != profile and old in states:
                    states[profile] = merge(states.get(profile), states.pop(old), self.cfg.recent_items)
                    gone.add(old)
            states[profile] = fold(states.get(profile), event, self.cfg.recent_items)
            gone.discard(profile)
        rows = pa.Table.from_pylist([row(p, s) for p, s in states.items()], schema=self.schema)
        if not online_write.write_rows(self.store, self.view, rows):  # Feast's push: the same rows, ~3x slower
            self.store.push(PUSH_SOURCE, rows.to_pandas(), to=PushMode.ONLINE)
        crash_point("stream_pushed")
        try:
            self.state.commit(committed, (self.log.log_id, batch[-1][0]), states, gone, reset)
        except Conflict:
            log.info("another stream consumer committed first; this step is redone from its offset")
            return 0
        crash_point("stream_committed")
        return len(batch)

    def run(self, stop: threading.Event, until_idle: bool = False) -> int:
        """Steps until `stop` is set (or, `until_idle`, until the log has nothing new); events folded."""
        done = 0
        while not stop.is_set():
            n = self.step()
            done += n
            if n == 0:
                if until_idle:
                    break
                stop.wait(self.cfg.poll_seconds)
        return done

    def close(self) -> None:
        self.log.close()
        self.state.close()


def claim(ws: Workspace):
    """This machine's consumer lock (an open file holding a flock, freed when its process dies), or None when
    another process holds it."""
    ws.stream.mkdir(parents=True, exist_ok=True)
    fh = open(ws.stream / "consumer.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def follow(ws: Workspace, stop: threading.Event, retry_seconds: float = 5.0) -> None:
    """`propel stream run --wait` (how `propel serve` runs the consumer, in a process of its own): wait for the
    machine's lock, then consume until `stop`; a failure (no features applied yet, the online store down) is
    logged and retried."""
    lock = None
    try:
        while not stop.is_set():
            try:
                lock = lock or claim(ws)
                if lock is not None:
                    consumer = Consumer(ws)
                    try:
                        consumer.run(stop)
                    finally:
                        consumer.close()
            except Exception as exc:  # noqa: BLE001 - keep following; retried
                log.warning("stream consumer stopped (%s: %s); retrying in %.0f s", type(exc).__name__,
                            exc if isinstance(exc, NotApplied) else "see the stream settings", retry_seconds)
            stop.wait(retry_seconds)
    finally:
        if lock is not None:
            lock.close()


def reader(store):
    """The real-time view's online reader, or None for a store applied before it existed."""
    from feast.errors import FeatureServiceNotFoundException

    from propel.featurestore.store import online_reader

    try:
        return online_reader(store, SERVICE)
    except FeatureServiceNotFoundException:
        return None


def recent(reader, customer_id: str) -> tuple[list[str], list[str]]:
    """(recent views, recent purchases) of a profile, newest first, from the real-time view."""
    found = reader.one(customer_id) or {}
    return list(found.get("recent_views") or []), list(found.get("recent_purchases") or [])


def days_since(ts: np.ndarray, now: datetime) -> np.ndarray:
    """Days from each time (Unix seconds) to `now` as a snapshot cut at the next midnight counts them (today = 1),
    so the models see the value they were trained on."""
    today = datetime(now.year, now.month, now.day, tzinfo=timezone.utc).timestamp() // 86400
    return today - np.floor(np.asarray(ts, np.float64) / 86400) + 1

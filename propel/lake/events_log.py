"""The append-only event log behind POST /events: an event is answered `accepted` only once it is here.

Embedded default: one SQLite file in WAL mode (`<workspace>/data/stream/events.db`) with synchronous=FULL, so a
committed append survives `kill -9` (and a power cut); several processes append at once under SQLite's write
lock. Production: Redis Streams (`[stream] backend = "redis"`), one stream plus the set of logged event ids,
both changed by one server-side script so a batch is atomic; it is as durable as the server is configured to be
(`appendonly yes`, `appendfsync always` for the same promise as SQLite).

Each log has a random `log_id`, so a reader's saved offset (the lake flush's, the stream consumer's) is never
applied to another log (a deleted and recreated file, an emptied Redis). Each event_id is logged once: `append`
returns the ids it added (with their person), and a resent one is not added again.
Appending resolves each new event's person (`identity.resolve_live`) under the log's write lock, with the
links earlier events made (a login moving a device to a customer) kept beside the events, so every
process names a person alike and the log's order is the order links were made in.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid

from propel.config import Workspace
from propel.lake.identity import node_key, resolve_live

STREAM_KEY = "propel:events"  # the Redis stream; its event ids are in STREAM_KEY + ":ids", its links in ":links"
# KEYS: stream, id set, links hash; ARGV: n events, then (event_id, body) each, then (identifier, profile) pairs
_REDIS_APPEND = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  redis.call('SADD', KEYS[2], ARGV[2 + 2 * i])
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[3 + 2 * i])
end
for i = 2 + 2 * n, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return n
"""
Mapped = list[tuple[str | None, str | None]]


def _keys(events: list[dict]) -> set[str]:
    """The identifier keys whose links resolving these events reads."""
    keys = set()
    for e in events:
        if e.get("identity_type") is not None and e.get("identity_value") is not None:
            keys.add(node_key(e["identity_type"], e["identity_value"]))
        if e.get("customer_id") is not None:
            keys.add(node_key("customer_id", e["customer_id"]))
    return keys


def _resolve(events: list[dict], mapped: Mapped | None, logged: set[str], links: dict[str, str]):
    """The events not logged before (first of each id), with their person resolved; and the new links."""
    fresh, fresh_mapped, seen = [], [], set(logged)
    for e, m in zip(events, mapped or [(None, None)] * len(events)):
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            fresh.append(dict(e))
            fresh_mapped.append(m)
    return fresh, resolve_live(fresh, fresh_mapped, links)


def durable_sqlite(path) -> sqlite3.Connection:
    """A SQLite file whose committed transactions survive `kill -9` and a power cut (WAL, synchronous=FULL);
    transactions are the caller's (`BEGIN IMMEDIATE` ... `COMMIT`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    # switching a new file to WAL while another process opens it can fail at once ("database is locked"), without
    # SQLite's busy wait: retried for up to the same 60 s (it is a no-op once either process has switched)
    deadline = time.monotonic() + 60
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=FULL")
    return db


def redis_client(url: str):
    """A client for `[stream] redis_url` ("host:port", optionally "redis://host:port")."""
    import redis

    host, _, port = url.removeprefix("redis://").partition(":")
    return redis.Redis(host=host or "127.0.0.1", port=int(port or 6379))


class SQLiteLog:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.db = durable_sqlite(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS events (offset INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS links (identifier TEXT PRIMARY KEY, profile_id TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
        self.log_id = self.db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
        self.start = 0  # the offset before the first event

    def append(self, events: list[dict], mapped: Mapped | None = None) -> dict[str, str]:
        """Log the events not logged before, each with its person resolved, in one transaction; once it
        is durable, the ids added -> their profile_id. `mapped`: see `identity.resolve_live`."""
        if not events:
            return {}
        ids, keys = [e["event_id"] for e in events], sorted(_keys(events))
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                logged = {r[0] for r in self.db.execute(
                    f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(ids))})", ids)}
                links = dict(self.db.execute(
                    f"SELECT identifier, profile_id FROM links WHERE identifier IN ({','.join('?' * len(keys))})", keys))
                fresh, new_links = _resolve(events, mapped, logged, links)
                self.db.executemany("INSERT INTO events (event_id, body) VALUES (?, ?)",
                                    [(e["event_id"], json.dumps(e, default=str)) for e in fresh])
                self.db.executemany("INSERT OR REPLACE INTO links VALUES (?, ?)", new_links.items())
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return {e["event_id"]: e["profile_id"] for e in fresh}

    def read(self, after: int = 0, limit: int = 10_000) -> list[tuple[int, dict]]:
        """Logged events after offset `after`, oldest first."""
        with self.lock:
            rows = self.db.execute("SELECT offset, body FROM events WHERE offset > ? ORDER BY offset LIMIT ?",
                                   (after, limit)).fetchall()
        return [(o, json.loads(b)) for o, b in rows]

    def forget(self, customer_ids: set[str], identifiers: set[tuple[str, str]]) -> int:
        """Delete the events of these people (by customer_id, or by (identity_type, identity_value))."""
        with self.lock:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (k TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM gone")
            self.db.executemany("INSERT OR IGNORE INTO gone VALUES (?)",
                                [(node_key("customer_id", c),) for c in customer_ids] + [(node_key(t, v),) for t, v in identifiers])
            self.db.execute("BEGIN IMMEDIATE")
            gone = self.db.execute(
                "DELETE FROM events WHERE 'customer_id:' || json_extract(body, '$.customer_id') IN (SELECT k FROM gone) "
                "OR json_extract(body, '$.identity_type') || ':' || json_extract(body, '$.identity_value') "
                "IN (SELECT k FROM gone) OR json_extract(body, '$.profile_id') IN "
                f"({','.join('?' * len(customer_ids))})", sorted(customer_ids)).rowcount
            self.db.execute("DELETE FROM links WHERE identifier IN (SELECT k FROM gone) OR profile_id IN "
                            f"({','.join('?' * len(customer_ids))})", sorted(customer_ids))
            self.db.execute("COMMIT")
            return gone

    def close(self) -> None:
        self.db.close()


class RedisLog:
    def __init__(self, url: str):
        self.client = redis_client(url)
        self.script = self.client.register_script(_REDIS_APPEND)
        self.keys = [STREAM_KEY, STREAM_KEY + ":ids", STREAM_KEY + ":links"]
        self.client.set(STREAM_KEY + ":log_id", uuid.uuid4().hex, nx=True)
        self.log_id = self.client.get(STREAM_KEY + ":log_id").decode()
        self.start = "0-0"

    def append(self, events: list[dict], mapped: Mapped | None = None) -> dict[str, str]:
        """As `SQLiteLog.append`; resolving reads the links, so appends hold a Redis lock (one writer at a time)."""
        if not events:
            return {}
        ids, keys = [e["event_id"] for e in events], sorted(_keys(events))
        with self.client.lock(STREAM_KEY + ":lock", timeout=30, blocking_timeout=30):
            logged = {i for i, m in zip(ids, self.client.smismember(self.keys[1], ids)) if m}
            links = {k: p.decode() for k, p in zip(keys, self.client.hmget(self.keys[2], keys) if keys else []) if p}
            fresh, new_links = _resolve(events, mapped, logged, links)
            self.script(keys=self.keys, args=[len(fresh), *(v for e in fresh for v in (e["event_id"], json.dumps(e, default=str))),
                                              *(v for kv in new_links.items() for v in kv)])
        return {e["event_id"]: e["profile_id"] for e in fresh}

    def read(self, after: str = "0-0", limit: int = 10_000) -> list[tuple[str, dict]]:
        rows = self.client.xrange(STREAM_KEY, min=f"({after}", count=limit)
        return [(o.decode(), json.loads(f[b"e"])) for o, f in rows]

    def forget(self, customer_ids: set[str], identifiers: set[tuple[str, str]]) -> int:
        """Reads the whole stream (a forget is rare; a per-person index would cost every append)."""
        gone = [o for o, e in self.read(limit=10**9) if e.get("customer_id") in customer_ids
                or e.get("profile_id") in customer_ids or (e.get("identity_type"), e.get("identity_value")) in identifiers]
        keys = {node_key("customer_id", c) for c in customer_ids} | {node_key(t, v) for t, v in identifiers}
        links = [k for k, p in self.client.hgetall(self.keys[2]).items() if k.decode() in keys or p.decode() in customer_ids]
        if links:
            self.client.hdel(self.keys[2], *links)
        return int(self.client.xdel(STREAM_KEY, *gone)) if gone else 0

    def close(self) -> None:
        self.client.close()


def forget(ws: Workspace, customer_ids: set[str], identifiers: set[tuple[str, str]]) -> int:
    """`propel forget`'s step for the event log: the people's logged events deleted (none when no log exists)."""
    if ws.settings().stream.backend == "sqlite" and not (ws.stream / "events.db").exists():
        return 0
    log = open_log(ws)
    try:
        return log.forget(customer_ids, identifiers)
    finally:
        log.close()


def open_log(ws: Workspace) -> SQLiteLog | RedisLog:
    cfg = ws.settings().stream
    return RedisLog(cfg.redis_url) if cfg.backend == "redis" else SQLiteLog(ws.stream / "events.db")

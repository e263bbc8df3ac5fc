"""The append-only event log behind POST /events: an event is answered `accepted` only once it is here.

Embedded default: one SQLite file in WAL mode (`<workspace>/data/stream/events.db`) with synchronous=FULL, so a
committed append survives `kill -9` (and a power cut); several processes append at once under SQLite's write
lock. Production: Redis Streams (`[stream] backend = "redis"`), one stream plus the set of logged event ids,
both changed by one server-side script so a batch is atomic; it is as durable as the server is configured to be
(`appendonly yes`, `appendfsync always` for the same promise as SQLite).

Each event_id is logged once: `append` returns the ids it added, and a resent one is not added again.
"""

from __future__ import annotations

import json
import sqlite3
import threading

from propel.config import Workspace

STREAM_KEY = "propel:events"  # the Redis stream; its event ids are in STREAM_KEY + ":ids"
# KEYS: stream, id set; ARGV: event_id, body, event_id, body, ...; returns the ids added
_REDIS_APPEND = """
local added = {}
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    table.insert(added, ARGV[i])
  end
end
return added
"""


class SQLiteLog:
    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS events (offset INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")

    def append(self, events: list[dict]) -> list[str]:
        """Log the events not logged before, in one transaction; the ids added, once it is durable."""
        added = []
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    if self.db.execute("INSERT OR IGNORE INTO events (event_id, body) VALUES (?, ?)",
                                       (e["event_id"], json.dumps(e, default=str))).rowcount:
                        added.append(e["event_id"])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return added

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
                                [(f"customer_id:{c}",) for c in customer_ids] + [(f"{t}:{v}",) for t, v in identifiers])
            return self.db.execute(
                "DELETE FROM events WHERE 'customer_id:' || json_extract(body, '$.customer_id') IN (SELECT k FROM gone) "
                "OR json_extract(body, '$.identity_type') || ':' || json_extract(body, '$.identity_value') "
                "IN (SELECT k FROM gone)").rowcount

    def close(self) -> None:
        self.db.close()


class RedisLog:
    def __init__(self, url: str):
        import redis

        host, _, port = url.removeprefix("redis://").partition(":")
        self.client = redis.Redis(host=host or "127.0.0.1", port=int(port or 6379))
        self.script = self.client.register_script(_REDIS_APPEND)

    def append(self, events: list[dict]) -> list[str]:
        args = [v for e in events for v in (e["event_id"], json.dumps(e, default=str))]
        return [i.decode() for i in self.script(keys=[STREAM_KEY, STREAM_KEY + ":ids"], args=args)] if args else []

    def read(self, after: str = "0-0", limit: int = 10_000) -> list[tuple[str, dict]]:
        rows = self.client.xrange(STREAM_KEY, min=f"({after}", count=limit)
        return [(o.decode(), json.loads(f[b"e"])) for o, f in rows]

    def forget(self, customer_ids: set[str], identifiers: set[tuple[str, str]]) -> int:
        gone = [o for o, e in self.read(limit=10**9) if e.get("customer_id") in customer_ids
                or (e.get("identity_type"), e.get("identity_value")) in identifiers]
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

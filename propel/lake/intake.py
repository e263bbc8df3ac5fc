"""Validation of events arriving over HTTP by the rules of file ingestion (one contract, one set of rules).

A batch of JSON events is staged through ingest's own `_Loader` (the column SELECT hashing PII by
name and by content, `_text`, `_parse`, `_checks`), read from lists of VARCHAR values (one per
column) instead of a file, so an event is accepted or rejected, with the same reason code, exactly
as the same row in a CSV would be; an event about a forgotten person is rejected (`forgotten`), as
ingest drops it. Each accepted event comes with what the committed identity map says of its identifier
and customer_id, for the log to resolve the person (`identity.resolve_live`). Cross-load dedup and bot
bursts are left to the lake flush.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from propel.config import Workspace
from propel.lake.ingest import _Loader
from propel.lake.schema import TABLES, normalize_column, quote_ident
from propel.lake.tables import Lake, connect_duckdb

EVENTS = TABLES["events"]
CONTRACT = [c.name for c in EVENTS.columns]
# The answer's columns: the contract's typed values (identity as ingest stages it) and the extras as JSON.
OUT_COLUMNS = CONTRACT + ["extra"]
# A field name as ingest reads a column name; batches repeat a few names, and the regex cost ~15 ms per 1,000 events.
_column_name = functools.lru_cache(maxsize=4096)(normalize_column)

# Staging queries kept prepared per process and workspace, one per set of columns (the contract's and a
# batch's extra fields); past this many, the least recently used one is dropped.
PREPARED_MAX = 32


@dataclass
class _Stager:
    """A workspace's loader (and DuckDB connection) in this process, used under `lock`, with its staging
    query prepared once per set of columns: binding and planning that query (hundreds of regex constants)
    cost several times what running it on a batch of 100 does."""
    loader: _Loader
    lock: threading.Lock = field(default_factory=threading.Lock)
    prepared: OrderedDict[tuple[str, ...], str] = field(default_factory=OrderedDict)  # columns -> statement name
    made: int = 0


_stagers: dict[str, _Stager] = {}
_maps: dict[str, str | None] = {}  # per workspace: the identity map file loaded into the `live_map` table
_stagers_lock = threading.Lock()


def _stager(ws: Workspace) -> _Stager:
    """One loader (and DuckDB connection) per workspace and process: connecting costs more than a batch."""
    key = str(ws.root)
    with _stagers_lock:
        if key not in _stagers:
            con = connect_duckdb(ws, threads=1)  # batches are small: one thread keeps row order and the other core
            _stagers[key] = _Stager(_Loader(Lake(ws), ws.settings(), ws.root, datetime.now(timezone.utc), con=con))
        return _stagers[key]


def _prepared(stager: _Stager, names: tuple[str, ...]) -> str:
    """The prepared staging query of a batch with columns `names`. The batch is its parameter `batch` (one
    VARCHAR list per column, unnested side by side) and the future bound its parameter `future`: DuckDB
    re-binds a statement that reads a table on each run, so the statement reads none, and nothing of a
    batch is bound into it."""
    name = stager.prepared.get(names)
    if name is not None:
        stager.prepared.move_to_end(names)
        return name
    loader = stager.loader
    # `$batch` used once: DuckDB re-binds at each run a statement that uses a parameter in several places
    src = ("(SELECT " + ", ".join(f"unnest(b[{i}]) AS {quote_ident(n)}" for i, n in enumerate(names, 1))
           + " FROM (SELECT $batch::VARCHAR[][] AS b))")
    sql, _, _ = loader._stage_sql(EVENTS, [loader._select(src, "http", EVENTS, names=list(names))],
                                  future="$future::TIMESTAMP")
    stager.made += 1
    name = f"intake_stage_{stager.made}"
    loader.con.execute(f"PREPARE {name} AS {sql}")
    stager.prepared[names] = name
    if len(stager.prepared) > PREPARED_MAX:
        loader.con.execute(f"DEALLOCATE {stager.prepared.popitem(last=False)[1]}")
    return name


def _text(value) -> str | None:
    """A JSON value as the text a CSV cell would hold: booleans as true/false, objects as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def _field(reason: str) -> str:
    """The field a reason code names (`bad_timestamp:ts` -> ts); an event naming nobody -> customer_id."""
    return reason.split(":", 1)[1] if ":" in reason else "customer_id"


def validate(ws: Workspace, events: list, now: datetime | None = None) -> list[dict]:
    """One result per input event, in order: {"status": "accepted", "event": {...}} (typed, PII
    hashed; "mapped": (the identity map's customer_id of its identifier, of its customer_id)),
    {"status": "rejected", "field": ..., "reason": <ingest reason code>} or {"status": "duplicate"} for
    an event_id already accepted earlier in the batch."""
    results: list[dict | None] = [None] * len(events)
    rows: dict[str, list] = {c: [] for c in CONTRACT}
    index: list[int] = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            results[i] = {"status": "rejected", "field": str(i), "reason": "not_an_object"}
            continue
        values: dict[str, str | None] = {}
        for key, value in event.items():
            name = _column_name(str(key))
            if name in values or not name:
                results[i] = {"status": "rejected", "field": str(key), "reason": "duplicate_field"}
                break
            values[name] = _text(value)
        if results[i] is not None:
            continue
        for name in values.keys() - rows.keys():
            rows[name] = [None] * len(index)
        for name, column in rows.items():
            column.append(values.get(name))
        index.append(i)
    if index:
        staged = _stage(ws, rows, now)
        seen: set[str] = set()
        for i, (reason, event, mapped) in zip(index, staged):
            if reason is not None:
                results[i] = {"status": "rejected", "field": _field(reason), "reason": reason}
            elif event["event_id"] in seen:
                results[i] = {"status": "duplicate"}
            else:
                seen.add(event["event_id"])
                results[i] = {"status": "accepted", "event": event, "mapped": mapped}
    return results  # type: ignore[return-value]


def _refresh_map(ws: Workspace, loader: _Loader) -> None:
    """`live_map` = the lake's committed identity map, re-read when a load committed a new one (a table
    in memory: probing it per batch costs far less than scanning Parquet)."""
    lake = Lake(ws)
    files = lake.files("identity_map")
    path = str(files[0]) if files else None
    if _maps.get(str(ws.root), "") != path:
        lake.identity_map_view(loader.con)
        loader.con.execute("CREATE OR REPLACE TEMP TABLE live_map AS SELECT * FROM identity_map")
        _maps[str(ws.root)] = path


def _stage(ws: Workspace, rows: dict[str, list], now: datetime | None) -> list[tuple[str | None, dict, tuple]]:
    """(reason or None, clean event, (map's id of its identifier, of its customer_id)) per row, in order,
    staged by ingest's `_Loader`. Every contract column is present (NULL when an event lacks it), so a
    missing field is a per-event reason."""
    names = tuple(CONTRACT) + tuple(sorted(rows.keys() - set(CONTRACT)))  # one query per set of extra fields
    stager = _stager(ws)
    loader = stager.loader
    with stager.lock:
        loader.now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
        con = loader.con
        statement = _prepared(stager, names)
        con.execute("SET VARIABLE intake_batch = ?", [[rows[n] for n in names]])
        staged = con.sql(f"EXECUTE {statement}(batch := getvariable('intake_batch'), "
                         f"future := {loader._future()})").to_arrow_table()
        _refresh_map(ws, loader)
        forgotten = loader._forgotten(set(rows))
        why = "coalesce(_dup, _reason)"  # as ingest's `_drop_forgotten` marks a forgotten person's rows
        why = f"CASE WHEN {forgotten} THEN 'forgotten' ELSE {why} END" if forgotten else why
        has_extra = len(rows) > len(CONTRACT)
        cols = ", ".join(f"s.{quote_ident(c)}" for c in CONTRACT) + (", s.extra" if has_extra else ", NULL AS extra")
        con.register("intake_staged", staged)
        try:
            fetched = con.execute(
                f"SELECT _why, {cols}, n.customer_id, c.customer_id FROM (SELECT *, {why} AS _why FROM intake_staged) s "
                "LEFT JOIN live_map n ON n.identity_type = s.identity_type AND n.identity_value = s.identity_value "
                "LEFT JOIN live_map c ON c.identity_type = 'customer_id' AND c.identity_value = s.customer_id "
                "ORDER BY _row").fetchall()
        finally:
            con.unregister("intake_staged")
    out = []
    for reason, *values, of_node, of_customer in fetched:
        event = dict(zip(OUT_COLUMNS, values))
        if event["ts"] is not None:
            event["ts"] = event["ts"].replace(tzinfo=timezone.utc).isoformat()
        out.append((reason, event, (of_node, of_customer)))
    return out

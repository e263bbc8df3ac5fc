"""Fast materialization: Feast's online store contents, written in bulk.

Feast's stock path reads through the offline store, builds one ValueProto per value in Python and
runs one SQLite upsert per (entity, feature): about 1,500 entities/s, 11 minutes for 1M customers.
Here DuckDB picks the newest row per entity straight from the view's Parquet files, values are
serialised a column at a time (each distinct value once, by protobuf itself; doubles with numpy),
and rows go to SQLite as one multi-row upsert per entity, sorted by key, with every blob bound as a
bytearray (which Python's sqlite3 binds without an adapter lookup), or to Redis as pipelined HSETs
laid out in bulk. What lands is what Feast's own writers would
store (same tables, keys, bytes, timestamps), so Feast's read path is unchanged;
tests/featurestore/test_online_write.py checks that against stock Feast.

It runs inside Feast: `propel.featurestore.engine` is the batch engine named in the workspace's
feature_store.yaml, so `feast materialize[-incremental]` and `FeatureStore.materialize` take this path
and Feast keeps its own bookkeeping (intervals, affected services). Anything this module does not handle
(other sources, stores, types or Feast settings, or a Feast without the private helpers it uses, see
`feast_private`) is left to Feast's stock engine, with a warning, rather than written differently.
`cluster_sqlite_tables` (run by `propel.featurestore.store.apply`) stores Feast's SQLite tables WITHOUT ROWID,
which both paths write faster.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import lru_cache

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView, FileSource, RepoConfig
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureViewState
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore  # noqa: F401 - registers Feast's sqlite3 datetime adapter
from feast.protos.feast.types.Value_pb2 import StringList, Value
from feast.utils import make_tzaware, to_naive_utc
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from propel.featurestore import feast_private as private
from propel.features import asof
from propel.lake.tables import crash_point
from propel.lake.schema import quote_ident, quote_literal

log = logging.getLogger(__name__)

SQLITE_BATCH = 50_000  # entities per transaction
# bytes per page of an empty SQLite store: inserting 50k customers' rows took 0.7-0.9x the time of SQLite's default
# 4 KiB pages (the same rows, a quarter of the pages to write and link), at the same file size
SQLITE_PAGE = 16_384
ENCODE_ROWS = 50_000  # entities laid out per step for Redis (bounds memory: ~400 MB at 100 features)
REDIS_BATCH = 500  # entities per sent batch (one HSET each; other clients' commands interleave)
READ_BATCH = 5_000  # keys per timestamp-read call (~5 ms of server time)
REDIS_SENDERS = 2  # connections sending write calls at once (see _overlapped)

# Feast value type -> (ValueProto field, the conversion Feast applies, Arrow column types Feast converts cleanly)
_SCALARS = {
    ValueType.INT64: ("int64_val", int, pa.types.is_integer),
    ValueType.DOUBLE: ("double_val", float, lambda t: t == pa.float64()),
    ValueType.STRING: ("string_val", str, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    ValueType.BOOL: ("bool_val", bool, pa.types.is_boolean),
    # lists of strings (the stream's recent items): one proto per row, not per distinct value
    ValueType.STRING_LIST: ("string_list_val", None, lambda t: pa.types.is_list(t) and pa.types.is_string(t.value_type)),
}
_KEY_TYPES = (ValueType.STRING, ValueType.INT64)
# A double ValueProto is field 5 with wire type 1 (fixed 64-bit): one tag byte, then 8 bytes little-endian.
DOUBLE_TAG = Value(double_val=1.0).SerializeToString()[0]


def write_view(cfg: RepoConfig, online_store: OnlineStore, view: FeatureView, start: datetime, end: datetime) -> bool:
    """Write the newest row per entity with start <= timestamp <= end; False (warned) if Feast's stock
    engine must do it. Both ends are inclusive, as in Feast's offline read."""
    start, end = make_tzaware(start), make_tzaware(end)
    reason = _unsupported(cfg, view)
    table = None if reason else _latest_rows(view, start, end)
    reason = reason or _unsupported_columns(view, table)
    if reason:
        log.warning("materializing %s with Feast's stock path (slow): %s", view.name, reason)
        return False
    table = _nullable_ints_as_floats(view, table)
    if table.num_rows:
        if cfg.online_store.type == "sqlite":
            _write_sqlite(cfg, view, table)
        else:
            _write_redis(cfg, online_store, view, table)
    return True


def write_rows(store: FeatureStore, view: FeatureView, table: pa.Table) -> bool:
    """Rows made in memory (the stream consumer's, propel/featurestore/realtime.py) written as `write_view` writes
    a snapshot's, all of them (Redis: unless stored ones are as new); False (warned) if Feast's path must."""
    cfg = store.config
    reason = _unsupported(cfg, view) or _unsupported_columns(view, table)
    if reason:
        log.warning("writing %s with Feast's stock path (slow): %s", view.name, reason)
        return False
    if table.num_rows:
        if cfg.online_store.type == "sqlite":
            _write_sqlite(cfg, view, table)
        else:
            _write_redis(cfg, private.lookup("provider")(store).online_store, view, table)
    return True


def _unsupported(cfg: RepoConfig, view: FeatureView) -> str | None:
    """Why this view/store combination needs Feast's own path, or None."""
    src = view.batch_source
    lacking = private.missing(private.WRITER)
    state = getattr(view, "state", FeatureViewState.STATE_UNSPECIFIED)
    checks = [
        (bool(lacking), f"this Feast lacks {', '.join(lacking)}"),
        (type(view) is not FeatureView, f"{type(view).__name__} (transformations are Feast's)"),
        (not view.online, "view is not online"),
        (state not in (FeatureViewState.STATE_UNSPECIFIED, FeatureViewState.MATERIALIZING)
         and not state.can_transition_to(FeatureViewState.MATERIALIZING), f"view state {state.name}"),
        (cfg.offline_store.type != "duckdb", f"offline store {cfg.offline_store.type}"),
        (type(src) is not FileSource or not isinstance(src.file_format, (ParquetFormat, type(None)))
         or "://" in src.path or not src.path.endswith(".parquet"), "source is not local Parquet"),
        (bool(src.field_mapping) or bool(src.created_timestamp_column), "field mapping or created timestamp"),
        (len(view.entity_columns) != 1 or view.entity_columns[0].dtype.to_value_type() not in _KEY_TYPES,
         "not a single string or int64 join key"),
        (any(f.dtype.to_value_type() not in _SCALARS for f in view.features), "a feature type other than "
         "int64, double, string, bool or a list of strings"),
        (cfg.entity_key_serialization_version != 3, "entity key serialization version is not 3"),
        (cfg.registry.enable_online_feature_view_versioning, "feature view versioning"),
        (cfg.online_store.type not in ("sqlite", "redis"), f"online store {cfg.online_store.type}"),
        (cfg.online_store.type == "redis" and cfg.online_store.redis_type == "redis_cluster",
         "Redis Cluster (a batch's commands go to one node)"),
        (cfg.online_store.type == "sqlite" and (cfg.online_store.vector_enabled or getattr(
            cfg.online_store, "enable_openai_compatible_store", False)), "SQLite vector or value_num columns"),
    ]
    return next((why for failed, why in checks if failed), None)


def _latest_rows(view: FeatureView, start: datetime, end: datetime) -> pa.Table:
    """Join key, timestamp and features of the newest row per entity in the interval."""
    key, ts = view.entity_columns[0].name, view.batch_source.timestamp_field
    cols = ", ".join(quote_ident(c) for c in [key, ts, *(f.name for f in view.features)])
    # a feature table's view holds the stored values (the days clock features count from): what the features as
    # of `end` are made of, by the same newest-row rule (propel.features.asof)
    sql = asof.newest_sql("read_parquet($path)", quote_ident(key), quote_ident(ts), cols,
                          f"CAST({quote_ident(ts)} AS TIMESTAMP) BETWEEN $start AND $end")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rel = con.sql(sql, params={"path": view.batch_source.path, "start": to_naive_utc(start), "end": to_naive_utc(end)})
        return rel.to_arrow_table()


def _unsupported_columns(view: FeatureView, table: pa.Table) -> str | None:
    """Why Feast might convert these Parquet columns differently from us (e.g. float32, dates as strings)."""
    key = view.entity_columns[0]
    key_type = table.schema.field(key.name).type
    if not _SCALARS[key.dtype.to_value_type()][2](key_type) or table.column(key.name).null_count:
        return f"join key column {key.name} is {key_type} or has nulls"
    for f in view.features:
        arrow_type = table.schema.field(f.name).type
        if not _SCALARS[f.dtype.to_value_type()][2](arrow_type):
            return f"column {f.name} is {arrow_type} for a {f.dtype} feature"
    return None


def _nullable_ints_as_floats(view: FeatureView, table: pa.Table) -> pa.Table:
    """Feast passes the rows through pandas, so an int column with any null reaches its converter as
    float64 (NaN = null, exact only up to 2**53): the whole column, not a batch of it."""
    for f in view.features:
        column = table.column(f.name)
        if pa.types.is_integer(column.type) and column.null_count:
            floats = column.cast(pa.float64(), safe=False)
            table = table.set_column(table.schema.get_field_index(f.name), f.name, floats)
    return table


def _entity_keys(view: FeatureView, table: pa.Table) -> list[bytes]:
    key = view.entity_columns[0]
    return entity_keys(key.name, key.dtype.to_value_type(), table.column(key.name).to_pylist())


def entity_keys(join_key: str, value_type: ValueType, values: list) -> list[bytes]:
    """Feast's `serialize_entity_key` (version 3) for a single join key, without a proto per entity.

    Layout: key count, then (type, length, name) of the join key, then (type, length, bytes) of the value.
    """
    name = join_key.encode()
    head = struct.pack("<III", 1, ValueType.STRING.value, len(name)) + name + struct.pack("<I", value_type.value)
    if value_type == ValueType.STRING:
        return [head + len(b).to_bytes(4, "little") + b for b in (str(v).encode() for v in values)]
    return [head + b"\x08\x00\x00\x00" + int(v).to_bytes(8, "little", signed=True) for v in values]


def _event_times(view: FeatureView, table: pa.Table) -> tuple[np.ndarray, list[datetime]]:
    """Row codes into the distinct event timestamps, each converted exactly as Feast converts it."""
    column = table.column(view.batch_source.timestamp_field).to_numpy(zero_copy_only=False)
    codes, distinct = pd.factorize(pd.to_datetime(column))
    coerce = private.lookup("coerce_datetime")
    return codes, [coerce(t) for t in distinct.to_pydatetime()]  # datetimes made at once (a profile's are distinct)


def _encode(column: pa.ChunkedArray, value_type: ValueType) -> tuple[np.ndarray, np.ndarray]:
    """Serialised ValueProtos of a column (empty for null) and value_text (None for null), for SQLite.

    The blobs are bytearrays: Python's sqlite3 binds those as they are, while for each bytes object it
    first looks for an adapter (raising and clearing an AttributeError), which took a quarter to a
    third of the write time.
    """
    codes, blobs, texts = _distinct(column, value_type, sqlite=True)
    return blobs[codes], texts[codes]


def _distinct(column: pa.ChunkedArray, value_type: ValueType, sqlite: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray | None]:
    """Row codes into the column's distinct serialised ValueProtos and, for SQLite, their value_text (None for
    Redis); code -1, the last entry, is null (an empty blob, no text). Blobs are bytearrays for SQLite (see
    `_encode`), bytes for Redis.

    Starts from the same numpy array Feast converts (nullable ints arrive as floats, NaN is null).
    Each distinct value is serialised once by protobuf and value_text taken from Feast's own helper;
    doubles (each distinct value once too, bit for bit: -0.0 is not 0.0) are laid out with numpy in the
    wire format instead, as many are distinct; lists one per row.
    """
    blob = bytearray if sqlite else bytes
    text_of = private.lookup("extract_text_and_num")

    def texts(protos: list) -> np.ndarray | None:
        return _objects([None if p is None else text_of(p, False)[0] for p in protos] + [None]) if sqlite else None

    if value_type == ValueType.STRING_LIST:
        protos = [None if v is None else Value(string_list_val=StringList(val=v)) for v in column.to_pylist()]
        codes = np.array([-1 if p is None else i for i, p in enumerate(protos)], dtype=np.int64)
        return codes, _objects([blob() if p is None else blob(p.SerializeToString()) for p in protos] + [blob()]), \
            texts(protos)
    values = column.to_numpy(zero_copy_only=False)
    if value_type == ValueType.DOUBLE:
        codes, distinct = _double_codes(values)
        wire = _double_wire(distinct).view("V9").tolist()
        blobs = np.append(_objects(map(blob, wire), len(wire)), _objects([blob()]))
        # str(float), as extract_text_and_num does
        return codes, blobs, np.append(_objects(map(str, distinct.tolist()), len(distinct)), None) if sqlite else None
    field, convert, _ = _SCALARS[value_type]
    codes, distinct = pd.factorize(values)
    protos = [Value(**{field: convert(v)}) for v in distinct]
    return codes, _objects([blob(p.SerializeToString()) for p in protos] + [blob()]), texts(protos)


def _double_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row codes (-1: null, i.e. NaN) into the distinct doubles, bit for bit (-0.0 is not 0.0)."""
    codes, bits = pd.factorize(values.view(np.int64))
    codes[np.isnan(values)] = -1
    return codes, bits.view(np.float64)


def _double_wire(values: np.ndarray) -> np.ndarray:
    """Serialised double ValueProtos, 9 bytes each: the tag, then the value little-endian."""
    wire = np.empty(len(values), dtype=[("tag", "u1"), ("value", "<f8")])
    wire["tag"], wire["value"] = DOUBLE_TAG, values
    return wire


def _objects(items: Iterable, count: int = -1) -> np.ndarray:
    """A 1-D object array of `items` (np.array would turn equal-length bytearrays into rows of ints)."""
    return np.fromiter(items, dtype=object, count=count)


def _write_sqlite(cfg: RepoConfig, view: FeatureView, table: pa.Table) -> None:
    """Upsert as Feast's SqliteOnlineStore does, but one multi-row statement per entity (~2x fewer
    CPU cycles than a statement per value) and in primary-key order (entity key bytes, then feature
    name), so SQLite appends to its B-trees instead of splitting pages all over them (~2.5x).
    Parameters go to `executemany` as one tuple per entity, zipped from the encoded columns as it
    binds them, with blobs as bytearrays (see `_encode`); the rest is SQLite's own insert work.
    """
    keys = pa.array(_entity_keys(view, table), pa.binary())
    order = pc.sort_indices(keys)
    table, keys = table.take(order), list(map(bytearray, keys.take(order).to_pylist()))
    codes, times = _event_times(view, table)
    stamps = np.array([sqlite3.adapt(to_naive_utc(t)) for t in times], dtype=object)[codes].tolist()
    feats = sorted(view.features, key=lambda f: f.name)
    rows_sql = ", ".join(f"(?1, {quote_literal(f.name)}, ?{3 + 2 * j}, ?{4 + 2 * j}, ?2, NULL)" for j, f in enumerate(feats))
    sql = (f"INSERT INTO {quote_ident(private.lookup('compute_table_id')(cfg.project, view))} "
           f"(entity_key, feature_name, value, value_text, event_ts, created_ts) VALUES {rows_sql} "
           "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
           "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")
    db = sqlite3.connect(private.lookup("sqlite_db_path")(cfg))
    try:
        db.execute("PRAGMA synchronous = OFF")  # the store is rebuilt from Parquet if a crash ever corrupts it
        for s in range(0, table.num_rows, SQLITE_BATCH):
            batch = table.slice(s, SQLITE_BATCH)
            columns = [keys[s:s + SQLITE_BATCH], stamps[s:s + SQLITE_BATCH]]
            for f in feats:
                columns += (c.tolist() for c in _encode(batch.column(f.name), f.dtype.to_value_type()))
            with db:
                db.executemany(sql, zip(*columns))
    finally:
        db.close()


def cluster_sqlite_tables(store: FeatureStore) -> None:
    """Keep each view's SQLite rows in their primary key's B-tree only: 0.6x the materialization time.

    Feast creates a rowid table with a (entity_key, feature_name) primary key and a separate
    entity_key index, so every stored value goes into three B-trees. Rebuilt WITHOUT ROWID from
    Feast's own DDL, the rows live in the primary key, whose entity_key prefix also serves Feast's
    reads; Feast's `_ek` index is kept as an empty partial index (WHERE 0), so the CREATE INDEX IF
    NOT EXISTS of its next apply finds it and adds nothing. Columns, keys and values are Feast's.
    A store made before this layout is converted once, rows included. An empty store gets pages of
    SQLITE_PAGE bytes. Skipped (Feast's layout kept) on a Feast without the private helpers it needs.
    """
    cfg = store.config
    if private.missing(("sqlite_db_path", "compute_table_id")):
        return
    compute_table_id = private.lookup("compute_table_id")
    db = sqlite3.connect(private.lookup("sqlite_db_path")(cfg))
    try:
        for view in store.list_feature_views():
            table = compute_table_id(cfg.project, view, cfg.registry.enable_online_feature_view_versioning)
            ddl = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            if ddl is None or ddl[0].rstrip().upper().endswith("WITHOUT ROWID"):
                continue
            quoted, old = quote_ident(table), quote_ident(f"{table}__rowid")
            if db.execute(f"SELECT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0]:
                log.warning("online store: moving %s to the clustered layout, rows included (once)", table)
            with db:
                db.execute(f"ALTER TABLE {quoted} RENAME TO {old}")
                db.execute(f"{ddl[0]} WITHOUT ROWID")
                db.execute(f"INSERT INTO {quoted} SELECT * FROM {old} ORDER BY entity_key, feature_name")
                db.execute(f"DROP TABLE {old}")  # and Feast's _ek index with it
                db.execute(f"CREATE INDEX {quote_ident(table + '_ek')} ON {quoted} (entity_key) WHERE 0")
        tables = [t for t, in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
        empty = not any(db.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(t)})").fetchone()[0] for t in tables)
        if empty and db.execute("PRAGMA page_size").fetchone()[0] != SQLITE_PAGE:
            db.execute(f"PRAGMA page_size = {SQLITE_PAGE}")
            db.execute("VACUUM")  # takes the new page size; nothing to copy
    finally:
        db.close()


def _write_redis(cfg: RepoConfig, online_store: OnlineStore, view: FeatureView, table: pa.Table) -> None:
    """HSET each entity's hash as Feast's RedisOnlineStore does (+ EXPIRE with a key TTL), pipelined.

    Same hash key (entity key + project), same mmh3 field names and `_ts:<view>` field, and the
    same rule: an entity whose stored timestamp is as new or newer is left alone (unless skip_dedup).
    The commands are laid out in bulk (`_Commands`) and sent REDIS_BATCH entities at a time; each reply is
    read, so an error reply fails the write. redis-py would cost ~20 us of Python per command, and a
    server-side script taking the values as arguments converts each of them to a Lua string and back.
    """
    online = cfg.online_store
    client = private.lookup("redis_client")(online_store, online)
    read = client.register_script(_REDIS_READ)
    commands = _Commands(view, online.key_ttl_seconds or 0)
    keys = np.array([k + cfg.project.encode() for k in _entity_keys(view, table)], dtype=object)
    codes, times = _event_times(view, table)
    stamps = [Timestamp() for _ in times]
    for stamp, t in zip(stamps, times):
        stamp.FromDatetime(make_tzaware(t))
    stamp_bytes = np.array([st.SerializeToString() for st in stamps], dtype=object)[codes]
    stamp_nanos = np.array([st.seconds * 1_000_000_000 + st.nanos for st in stamps], dtype=np.int64)[codes]
    ts_field = f"_ts:{view.name}"

    def batches():
        # values are laid out ENCODE_ROWS at a time (per-call overhead), then sent REDIS_BATCH entities per call
        for c in range(0, table.num_rows, ENCODE_ROWS):
            chunk_keys, rows = keys[c:c + ENCODE_ROWS], np.arange(c, min(c + ENCODE_ROWS, table.num_rows))
            if not online.skip_dedup:
                # stored timestamps, read in calls of READ_BATCH keys: each waits behind at most one write call
                stored = np.array([_stamp_nanos(b) for r in range(0, len(chunk_keys), READ_BATCH)
                                   for b in read(keys=chunk_keys[r:r + READ_BATCH].tolist(), args=[ts_field])], np.int64)
                newer = (stored == 0) | (stamp_nanos[rows] > stored)
                chunk_keys, rows = chunk_keys[newer], rows[newer]
            data, starts = commands.lay_out(table.take(rows), chunk_keys, stamp_bytes[rows])
            for s in range(0, len(rows), REDIS_BATCH):
                end = min(s + REDIS_BATCH, len(rows))
                yield data[starts[s]:starts[end]], (end - s) * commands.per_entity

    pool = client.connection_pool

    def send(payload: memoryview, replies: int) -> None:
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload])
            for _ in range(replies):
                conn.read_response()  # raises on an error reply
            crash_point("online_redis_batch")
        except BaseException:
            conn.disconnect()  # replies may be left unread
            raise
        finally:
            pool.release(conn)

    _overlapped(batches(), send, depth=max(2, 2 * ENCODE_ROWS // REDIS_BATCH))


class _Commands:
    """A view's HSET (and EXPIRE) commands in the Redis protocol, laid out for many entities at once.

    Each entity's command is its header (HSET, key, timestamp field and value) followed by one `field value` piece
    per feature: pieces are made once per distinct value (doubles with numpy), gathered per row by an Arrow take,
    and the rows' commands end up back to back in one buffer, as hiredis would pack them one by one
    (tests/featurestore/test_online_write.py compares the bytes).
    """

    def __init__(self, view: FeatureView, ttl: int):
        mmh3 = private.lookup("mmh3")
        self.features = [(f.name, f.dtype.to_value_type(), _bulk(mmh3(f"{view.name}:{f.name}"))) for f in view.features]
        self.head = b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(view.features))
        self.ts_field = _bulk(f"_ts:{view.name}".encode())
        self.expire = b"*3\r\n$6\r\nEXPIRE\r\n", _bulk(str(ttl).encode()) if ttl else None
        self.per_entity = 2 if ttl else 1  # replies

    def lay_out(self, table: pa.Table, keys: np.ndarray, stamps: np.ndarray) -> tuple[memoryview, np.ndarray]:
        """All rows' commands in one buffer, and where each row's start (plus the end)."""
        heads = [self.head + _bulk(k) + self.ts_field + _bulk(st) for k, st in zip(keys.tolist(), stamps.tolist())]
        parts = [pa.array(heads, pa.large_binary())]
        parts += [self._pieces(table.column(name), value_type, field) for name, value_type, field in self.features]
        if self.expire[1] is not None:
            parts.append(pa.array([self.expire[0] + _bulk(k) + self.expire[1] for k in keys.tolist()], pa.large_binary()))
        rows = table.num_rows
        order = (np.arange(len(parts)) * rows + np.arange(rows)[:, None]).ravel()  # row by row
        _, offsets, data = pa.concat_arrays(parts).take(order).buffers()
        return memoryview(data or b""), np.frombuffer(offsets, np.int64, count=len(order) + 1)[::len(parts)]

    @staticmethod
    def _pieces(column: pa.ChunkedArray, value_type: ValueType, field: bytes) -> pa.Array:
        """Each row's `field value` (value: the serialised ValueProto, empty for null)."""
        if value_type == ValueType.DOUBLE:
            codes, distinct = _double_codes(column.to_numpy(zero_copy_only=False))
            head = np.frombuffer(field + b"$9\r\n", np.uint8)
            fixed = np.empty((len(distinct), len(head) + 11), np.uint8)
            fixed[:, :len(head)], fixed[:, -2:] = head, np.frombuffer(b"\r\n", np.uint8)
            fixed[:, len(head):-2] = _double_wire(distinct).view(np.uint8).reshape(-1, 9)
            pieces = pa.FixedSizeBinaryArray.from_buffers(pa.binary(fixed.shape[1]), len(distinct), [None, pa.py_buffer(fixed)])
            pieces = pa.concat_arrays([pieces.cast(pa.large_binary()), pa.array([field + _bulk(b"")], pa.large_binary())])
        else:
            codes, blobs, _ = _distinct(column, value_type, sqlite=False)
            pieces = pa.array([field + _bulk(b) for b in blobs], pa.large_binary())
        return pieces.take(np.where(codes < 0, len(pieces) - 1, codes))


def _bulk(value: bytes) -> bytes:
    """A Redis protocol bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _overlapped(batches: Iterator[tuple], send: Callable[..., object], depth: int) -> None:
    """Send batches from REDIS_SENDERS threads (one connection each) while the next ones are laid out, so the Redis server
    always has the next batch queued while it runs one (the socket waits release the GIL), and its work
    overlaps ours instead of following it. Up to `depth` batches wait to be sent: a whole chunk, so the server
    stays busy while the next chunk is laid out. (SQLite's executemany keeps the GIL while binding, so its writes gain
    nothing from this and run inline.)"""
    with ThreadPoolExecutor(REDIS_SENDERS) as sender:
        pending: deque = deque()
        for batch in batches:
            if len(pending) >= depth:
                pending.popleft().result()
            pending.append(sender.submit(send, *batch))
        while pending:
            pending.popleft().result()


# Run server-side per batch: the stored `_ts:<view>` of each key.
_REDIS_READ = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, ARGV[1]) end return out"


@lru_cache(maxsize=1024)
def _stamp_nanos(raw: bytes | None) -> int:
    """A stored `_ts:<view>` value in nanoseconds (0 if absent), as Feast compares them."""
    if not raw:
        return 0
    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return stamp.seconds * 1_000_000_000 + stamp.nanos

"""Fast materialization writes exactly what Feast's own materialization writes (SQLite and Redis).

Each check materializes the same data twice through Feast's `materialize`, with Feast's stock engine and
with Propel's (`propel.featurestore.engine`, running `online_write`), into two workspaces (two Redis
databases), and compares the raw store contents and what Feast's own `get_online_features` returns.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone

import hiredis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Float32, Float64, Int64, String

from propel.featurestore import online_write
from propel.featurestore.online_read import OnlineReader
from propel.featurestore import store as fstore
from propel.features.asof import as_of
from propel.features.build import load_catalog
from propel.config import Workspace
from tests.helpers import BIN, copy_workspace

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DTYPES = {ValueType.DOUBLE: Float64, ValueType.INT64: Int64, ValueType.STRING: String, ValueType.BOOL: Bool}


def _view(value_type: ValueType, entities=()) -> FeatureView:
    return FeatureView(name="v", entities=list(entities), schema=[Field(name="c", dtype=DTYPES[value_type])],
                       source=FileSource(path="x.parquet", timestamp_field="ts"))


# --- encoding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value_type, values", [
    (ValueType.DOUBLE, [0.0, -0.0, 1.5, 0.1, 1 / 3, 1e16, 1e-300, 5e-324, math.inf, -math.inf, math.nan, None, -2.5]),
    (ValueType.DOUBLE, [1.0, 2.0]),  # equal-length blobs and no null: still one object per value
    (ValueType.INT64, [0, 1, -1, 300, 2**62, -(2**63), 9999, 0]),
    (ValueType.INT64, [0, None, -7, 2**53 + 1]),  # with a null, Feast sees floats: 2**53 + 1 becomes 2**53
    (ValueType.STRING, ["", "a", "é ü 中", None, "x" * 300, "a"]),
    (ValueType.BOOL, [True, False, None, True]),
    (ValueType.BOOL, [True, False]),
])
def test_value_encoding_matches_feast(value_type, values):
    column = pa.array(values, from_pandas=False)
    table = online_write._nullable_ints_as_floats(_view(value_type), pa.table({"c": column}))
    protos = python_values_to_proto_values(table.column("c").to_numpy(zero_copy_only=False), value_type)
    blobs, texts = online_write._encode(table.column("c"), value_type)
    assert blobs.shape == (len(values),) and {type(b) for b in blobs} == {bytearray}  # sqlite3 binds these as they are
    assert list(blobs) == [p.SerializeToString() for p in protos]
    assert list(texts) == [extract_text_and_num(p, False)[0] for p in protos]
    # Redis: each entity's HSET, byte for byte as hiredis packs it (redis-py's packer), TTL'd keys expired after
    view = _view(value_type)
    keys, stamps = [b"key%d" % i for i in range(len(values))], [b"\x08\x01"] * len(values)
    for ttl in (0, 3600):
        commands = online_write._Commands(view, ttl)
        data, starts = commands.lay_out(table, np.array(keys, dtype=object), np.array(stamps, dtype=object))
        expected = [hiredis.pack_command(("HSET", k, "_ts:v", st, online_write.private.lookup("mmh3")("v:c"),
                                          p.SerializeToString())) + (hiredis.pack_command(("EXPIRE", k, ttl)) if ttl else b"")
                    for k, st, p in zip(keys, stamps, protos)]
        assert [bytes(data[a:b]) for a, b in zip(starts, starts[1:])] == expected


@pytest.mark.parametrize("value_type, values", [
    (ValueType.STRING, ["C1", "", "é-中", "x" * 300]),
    (ValueType.INT64, [0, 1, -1, 2**63 - 1, -(2**63)]),
])
def test_entity_keys_match_feast(value_type, values):
    view = FeatureView(name="v", entities=[Entity(name="e", join_keys=["some_id"], value_type=value_type)],
                       schema=[Field(name="some_id", dtype=DTYPES[value_type])],
                       source=FileSource(path="x.parquet", timestamp_field="ts"))
    field = "string_val" if value_type == ValueType.STRING else "int64_val"
    expected = [serialize_entity_key(EntityKey(join_keys=["some_id"], entity_values=[Value(**{field: v})]), 3)
                for v in values]
    assert online_write._entity_keys(view, pa.table({"some_id": values})) == expected


# --- helpers --------------------------------------------------------------------------------------

def _sqlite_dump(ws: Workspace) -> dict:
    """Every row of every online table, all columns (rowids aside), and the schema with its indexes."""
    db = sqlite3.connect(ws.online_store_db)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    cols = ("entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts, "
            "typeof(value), typeof(value_text), typeof(event_ts)")
    rows = {t: db.execute(f'SELECT {cols} FROM "{t}" ORDER BY entity_key, feature_name').fetchall() for t in tables}
    schema = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    return {**rows, "schema": schema}


def _page_size(ws: Workspace) -> int:
    db = sqlite3.connect(ws.online_store_db)
    try:
        return db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()


def _redis_client(ws: Workspace):
    import redis

    host_port, db = fstore.repo_config(ws, "redis").online_store.connection_string.split(",db=")
    host, port = host_port.split(":")
    return redis.Redis(host=host, port=int(port), db=int(db))


def _redis_dump(ws: Workspace) -> dict:
    client = _redis_client(ws)
    return {k: client.hgetall(k) for k in client.scan_iter(count=1000)}


def _redis_db(monkeypatch, redis_url: str, db: int):
    """A callable that points the stores made after it at Redis database `db` (emptied now)."""
    import redis

    host, port = redis_url.split(":")
    redis.Redis(host=host, port=int(port), db=db).flushdb()
    return lambda: monkeypatch.setenv("PROPEL_REDIS_URL", f"{redis_url},db={db}")


def _online(ws: Workspace, online: str, refs: list[str], rows: list[dict]) -> dict:
    return fstore.feature_store(ws, online).get_online_features(features=refs, entity_rows=rows).to_dict()


def _check_reader(reader: OnlineReader, ids: list, feast: dict, request_ts: datetime | None = None) -> None:
    """The fast reader answers what Feast answers: numbers as float64 (null = NaN), others as objects."""
    df, missing = reader.read(ids, request_ts)
    assert df[reader.key].tolist() == list(ids)
    assert not set(reader.hidden) & set(df.columns), "what on-demand views compute from is not answered"
    for name in (n for n in reader.numeric if n not in reader.hidden):
        want = np.array([np.nan if v is None else float(v) for v in feast[name]])
        assert np.array_equal(df[name].to_numpy(), want, equal_nan=True), name
    for name in (n for n in reader.other if n not in reader.hidden):
        assert df[name].tolist() == feast[name], name
    for name in (n for _, names in reader.on_demand for n in names):  # computed as Feast's on-demand views do
        want = np.array([np.nan if v is None else v for v in feast[name]], dtype=df[name].dtype)
        assert np.array_equal(df[name].to_numpy(), want, equal_nan=df[name].dtype.kind == "f"), name
    stored = [n for n in reader.numeric + reader.other if n not in reader.hidden]
    assert set(missing) <= {i for j, i in enumerate(ids) if all(feast[n][j] is None for n in stored)}
    return missing


def _intervals(ws: Workspace, online: str) -> dict:
    return {v.name: v.materialization_intervals for v in fstore.feature_store(ws, online).list_feature_views()}


# --- the real feature set -------------------------------------------------------------------------

def _stock_materialize(ws: Workspace, online: str) -> None:
    """Feast's own engine, view by view, over the same interval propel.featurestore.store.materialize uses."""
    store = fstore.feature_store(ws, online, fast=False)
    end = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]).replace(tzinfo=UTC) + timedelta(seconds=1)
    for view in store.list_feature_views():
        if view.stream_source is None:  # the real-time view is the stream's (pushed), as in fstore.materialize
            store.materialize(start_date=EPOCH, end_date=end, feature_views=[view.name])


def _check_built(built: Workspace, tmp_path, online: str, use_stock=lambda: None, use_fast=lambda: None):
    stock, fast = (copy_workspace(built, tmp_path / name) for name in ("stock", "fast"))
    latest = datetime.fromisoformat(load_catalog(built)['cutoffs'][-1])
    customers = [{"customer_id": c, "request_ts": latest} for c in as_of(built, latest, columns=[])["customer_id"][:50]]
    customers += [{"customer_id": "no-such-customer", "request_ts": latest}]
    items = [{"item_id": i} for i in as_of(built, latest, "item", columns=[])["item_id"][:20]]
    results = []
    for ws, use, load in ((stock, use_stock, _stock_materialize), (fast, use_fast, fstore.materialize)):
        use()
        fstore.apply(ws, online)
        load(ws, online)
        store = fstore.feature_store(ws, online)
        item_refs = [f"item_stats:{f.name}" for f in store.get_feature_view("item_stats").features]
        results.append((_online(ws, online, fstore.service_features(store, "churn_v1"), customers),
                        _online(ws, online, item_refs, items), _intervals(ws, online)))
    ids = [c["customer_id"] for c in customers]
    for service in ("churn_v1", "propensity_v1"):  # the second has an on-demand view (request time)
        reader = fstore.online_reader(store, service)
        feast = store.get_online_features(features=store.get_feature_service(service),
                                          entity_rows=[{"customer_id": i, "request_ts": 0} for i in ids]).to_dict()
        assert _check_reader(reader, ids + ids[:2], {k: v + v[:2] for k, v in feast.items()},
                             datetime(1970, 1, 1, tzinfo=UTC)) == ["no-such-customer"]
    assert reader.read(ids[:1], datetime(2025, 6, 7, 13, tzinfo=UTC))[0].loc[0, "request_dow"] == 5
    # customer_clock's fast path (asof.clock_arrays over the read arrays, no pandas) answers what Feast's
    # on-demand view answers, at a midnight, just after one and mid-day; the request_context view runs its own
    # function. Feast keeps whole seconds of a request time (a UnixTimestamp): to the microsecond, the fast path
    # answers what the view's function answers (the reader's pandas path) on the same frame
    midnight = latest.replace(tzinfo=UTC)
    for service in ("churn_v1", "propensity_v1"):
        reader = fstore.online_reader(store, service)
        assert reader._clock[[o.name for o, _ in reader.on_demand].index("customer_clock")], "the fast path is taken"
        for at in (midnight, midnight + timedelta(seconds=1), datetime(2026, 2, 3, 10, 30, tzinfo=UTC)):
            feast = store.get_online_features(features=store.get_feature_service(service),
                                              entity_rows=[{"customer_id": i, "request_ts": at} for i in ids]).to_dict()
            _check_reader(reader, ids, feast, at)
        slow = OnlineReader(store, service)
        slow._clock = [False] * len(slow.on_demand)
        for at in (midnight + timedelta(microseconds=1), midnight - timedelta(microseconds=1)):
            pd.testing.assert_frame_equal(reader.read(ids, at)[0], slow.read(ids, at)[0])
    assert results[1] == results[0]
    got = results[1][0]
    assert got["purchases_30d"][-1] is None and got["customer_id"][-1] == "no-such-customer"
    assert None in got["city_tier"] and None in got["gender"], "nulls (string and nullable int) are covered"
    assert {type(got[f][0]) for f in ("tenure_days", "revenue_30d", "preferred_channel_90d")} == {int, float, str}
    return stock, fast


def test_built_features_sqlite_identical_to_feast(built_features, tmp_path):
    stock, fast = _check_built(built_features, tmp_path, "sqlite")
    expected, got = _sqlite_dump(stock), _sqlite_dump(fast)
    assert got.keys() == expected.keys() and sum(map(len, got.values())) > 10_000
    assert sum(sql.endswith("WITHOUT ROWID") for *_, sql in got["schema"] if sql) == 4, "apply clusters every table"
    assert _page_size(fast) == online_write.SQLITE_PAGE, "apply gives an empty store larger pages"
    for table in expected:
        assert got[table] == expected[table], table
    again = fstore.materialize(fast, "sqlite")
    assert sorted(again["views"]) == ["customer_features", "customer_profile", "item_stats"], "ttl 0 views load whole"


@pytest.mark.redis
def test_built_features_redis_identical_to_feast(built_features, tmp_path, redis_url, monkeypatch):
    use_stock, use_fast = _redis_db(monkeypatch, redis_url, 1), _redis_db(monkeypatch, redis_url, 2)
    stock, fast = _check_built(built_features, tmp_path, "redis", use_stock, use_fast)
    use_stock()
    expected = _redis_dump(stock)
    use_fast()
    got = _redis_dump(fast)
    assert len(got) > 1000 and got == expected


@pytest.mark.redis
def test_redis_materialize_killed_then_rerun_and_two_at_once_store_what_one_run_does(built_features, tmp_path,
                                                                                      redis_url, monkeypatch):
    """`kill -9` after a batch of HSETs is answered leaves some entities written, which a re-run completes; two
    materializations at once store exactly what one does. (Each workspace copy has its own registry and Redis
    database.)"""
    def workspace(name: str, db: int) -> Workspace:
        ws = copy_workspace(built_features, tmp_path / name)
        _redis_db(monkeypatch, redis_url, db)()
        fstore.apply(ws, "redis")
        return ws

    def materialize(ws: Workspace, crash: str | None = None) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "propel"), "--workspace", str(ws.root), "features", "materialize", "--online",
                                 "redis"], env={**os.environ, **({"PROPEL_CRASH_AT": crash} if crash else {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    once = workspace("once", 6)
    fstore.materialize(once, "redis")
    expected = _redis_dump(once)
    killed = workspace("killed", 7)
    proc = materialize(killed, "online_redis_batch")
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert 0 < len(_redis_dump(killed)) < len(expected), "killed after some batches, not all"
    proc = materialize(killed)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert _redis_dump(killed) == expected
    both = workspace("both", 8)
    procs = [materialize(both), materialize(both)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert len(expected) > 1000 and _redis_dump(both) == expected


# --- a hand-written view: every type, NaN and nulls, older rows, interval edges, reruns ------------

T0, T1, T2 = (datetime(2025, 1, d) for d in (1, 8, 20))
PEOPLE = ["a", "b", "c", "é-中", "d", "z", "nobody"]
SHOPS = [1, -5, 2**40, 3]
RUNS = [(T0 - timedelta(days=1), T1 + timedelta(seconds=1)),  # first load; the T2 snapshot is after it
        (T1 + timedelta(seconds=1), T2),  # incremental; the end is inclusive, so T2 rows come in
        (T0, T0)]  # an older interval again: SQLite overwrites, Redis keeps newer stamps (as in Feast)


def _snapshot(path, people, stamps, n, x, s, b, m):
    pq.write_table(pa.table({
        "person_id": people, "event_timestamp": pa.array(stamps, pa.timestamp("us")), "n": pa.array(n, pa.int64()),
        "x": pa.array(x, pa.float64(), from_pandas=False), "s": pa.array(s, pa.string()),
        "b": pa.array(b, pa.bool_()), "m": pa.array(m, pa.int64())}), path)


def _tiny(ws: Workspace, float32: bool = False) -> list:
    """Three snapshot files of a string-keyed view and one file of an int-keyed view; the Feast objects."""
    folder = ws.features / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    _snapshot(folder / "0.parquet", ["a", "b", "c", "é-中", "d"], [T0] * 5, [1, 2, 3, 4, 5],
              [0.5, None, -0.0, math.inf, 2.0], ["old", None, "", "ü", "d0"], [True, None, False, True, False],
              [None, 1, 2**53 + 1, 4, 5])
    # c and é-中 only in the older snapshot; d twice in this one (the older row loses); a true NaN in x
    _snapshot(folder / "1.parquet", ["a", "b", "d", "d"], [T1, T1, T1, T1 - timedelta(days=1)], [-10, 2**62, 0, 99],
              [math.nan, 1e-300, 1 / 3, 9.0], ["new", "b1", None, "old-d"], [False, True, None, True], [7, None, 0, 1])
    _snapshot(folder / "2.parquet", ["a", "z"], [T2] * 2, [100, 200], [1.0, 2.0], ["later", "z"], [True, True], [1, 2])
    pq.write_table(pa.table({"shop_id": [1, -5, 2**40], "event_timestamp": pa.array([T0] * 3, pa.timestamp("us")),
                             "sales": [1.5, 2.5, None]}), folder / "shops.parquet")
    person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING)
    shop = Entity(name="shop", join_keys=["shop_id"], value_type=ValueType.INT64)
    tiny = FeatureView(
        name="tiny", entities=[person], ttl=timedelta(0), online=True,
        source=FileSource(name="tiny", path=str(folder / "[0-9].parquet"), timestamp_field="event_timestamp"),
        schema=[Field(name="n", dtype=Int64), Field(name="x", dtype=Float32 if float32 else Float64),
                Field(name="s", dtype=String), Field(name="b", dtype=Bool), Field(name="m", dtype=Int64)])
    shops = FeatureView(
        name="shops", entities=[shop], ttl=timedelta(0), online=True,
        source=FileSource(name="shops", path=str(folder / "shops.parquet"), timestamp_field="event_timestamp"),
        schema=[Field(name="sales", dtype=Float64)])
    services = [FeatureService(name="tiny_service", features=[tiny]), FeatureService(name="shop_service", features=[shops])]
    return [person, shop, tiny, shops, *services]


def _run_tiny(ws: Workspace, online: str, fast: bool, float32: bool = False) -> list:
    """Materialize RUNS one after the other (Propel's engine if `fast`, else Feast's); the online values after each run."""
    store = fstore.feature_store(ws, online, fast=fast)
    store.apply(_tiny(ws, float32))
    reads = []
    for start, end in RUNS:
        start, end = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
        for name in ("tiny", "shops"):
            store.materialize(start_date=start, end_date=end, feature_views=[name])
        reads.append((_online(ws, online, [f"tiny:{f}" for f in "nxsbm"], [{"person_id": p} for p in PEOPLE]),
                      _online(ws, online, ["shops:sales"], [{"shop_id": s} for s in SHOPS]),
                      _intervals(ws, online)))
        assert "nobody" in _check_reader(OnlineReader(store, "tiny_service", key="person_id"), PEOPLE, reads[-1][0])
        assert _check_reader(OnlineReader(store, "shop_service", key="shop_id"), SHOPS, reads[-1][1]) == [3], \
            "a shop stored with a null value is known, an unknown one missing"
    return reads


def _stock_paths(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "with Feast's stock path" in r.getMessage()]


def _check_tiny(tmp_path, monkeypatch, caplog, online: str, dump, use_stock=lambda: None, use_fast=lambda: None) -> list:
    stock, fast = Workspace.resolve(tmp_path / "stock"), Workspace.resolve(tmp_path / "fast")
    monkeypatch.setattr(online_write, "SQLITE_BATCH", 2)  # batch edges inside the data, e.g. a null in another batch
    monkeypatch.setattr(online_write, "REDIS_BATCH", 2)
    monkeypatch.setattr(online_write, "ENCODE_ROWS", 5)  # Redis: encoding chunks and timestamp reads split too
    monkeypatch.setattr(online_write, "READ_BATCH", 3)
    use_stock()
    expected = _run_tiny(stock, online, fast=False)
    expected_dump = dump(stock)
    use_fast()
    with caplog.at_level(logging.WARNING, logger="propel.featurestore.online_write"):
        got = _run_tiny(fast, online, fast=True)
    assert not _stock_paths(caplog), "Feast ran Propel's writer for every view"
    assert got == expected
    assert dump(fast) == expected_dump
    first = got[0][0]
    assert first["n"] == [-10, 2**62, 3, 4, 0, None, None]
    assert first["x"][:5] == [None, 1e-300, -0.0, math.inf, 1 / 3] and math.copysign(1, first["x"][2]) == -1
    assert first["s"][:5] == ["new", "b1", "", "ü", None] and first["b"][:5] == [False, True, False, True, None]
    assert first["m"][:5] == [7, None, 2**53, 4, 0], "a nullable int column passes through floats, as in Feast"
    assert got[0][1]["sales"] == [1.5, 2.5, None, None]
    assert got[1][0]["n"][0] == 100 and got[1][0]["n"][5] == 200
    return got


def test_tiny_view_sqlite_identical_to_feast(tmp_path, monkeypatch, caplog):
    got = _check_tiny(tmp_path, monkeypatch, caplog, "sqlite", _sqlite_dump)
    assert got[2][0]["n"] == [1, 2, 3, 4, 5, 200, None]


@pytest.mark.redis
def test_tiny_view_redis_identical_to_feast(tmp_path, redis_url, monkeypatch, caplog):
    got = _check_tiny(tmp_path, monkeypatch, caplog, "redis", _redis_dump, _redis_db(monkeypatch, redis_url, 3),
                      _redis_db(monkeypatch, redis_url, 4))
    assert got[2][0]["n"] == [100, 2**62, 3, 4, 0, 200, None]


@pytest.mark.redis
def test_redis_error_reply_fails_the_write_and_a_rerun_completes_it(tmp_path, redis_url, monkeypatch):
    """Every reply is read: a command Redis refuses (a key of another type where an entity's hash goes) fails the
    materialization, as Feast's own pipeline does, and the next run, with the key fixed, writes every entity."""
    _redis_db(monkeypatch, redis_url, 5)()
    monkeypatch.setattr(online_write, "REDIS_BATCH", 2)  # the refused command in the middle of the sent batches
    ws = Workspace.resolve(tmp_path / "ws")
    store = fstore.feature_store(ws, "redis")
    store.apply(_tiny(ws))
    client = _redis_client(ws)
    key = online_write.entity_keys("person_id", ValueType.STRING, ["c"])[0] + store.config.project.encode()
    client.set(key, b"not a hash")
    start, end = (t.replace(tzinfo=UTC) for t in RUNS[0])
    with pytest.raises(Exception, match="WRONGTYPE"):
        store.materialize(start_date=start, end_date=end, feature_views=["tiny"])
    client.delete(key)
    store.materialize(start_date=start, end_date=end, feature_views=["tiny"])
    assert _online(ws, "redis", ["tiny:n"], [{"person_id": p} for p in PEOPLE])["n"][:5] == [-10, 2**62, 3, 4, 0]


def test_sqlite_tables_converted_to_clustered_layout(tmp_path, caplog):
    """A store in Feast's layout is rebuilt WITHOUT ROWID with its rows; Feast re-applies, writes and reads it."""
    ws = Workspace.resolve(tmp_path / "ws")
    feast_reads = _run_tiny(ws, "sqlite", fast=False)
    feast_layout = _sqlite_dump(ws)
    assert not any("WITHOUT ROWID" in (sql or "") for *_, sql in feast_layout["schema"])
    with caplog.at_level(logging.WARNING, logger="propel.featurestore.online_write"):
        online_write.cluster_sqlite_tables(fstore.feature_store(ws, "sqlite"))
    assert "moving propel_tiny to the clustered layout" in caplog.text
    assert _page_size(ws) == 4096, "a store with rows keeps its pages (no VACUUM copying it)"
    clustered = _sqlite_dump(ws)
    assert {k: v for k, v in clustered.items() if k != "schema"} == {k: v for k, v in feast_layout.items() if k != "schema"}
    reads = _run_tiny(ws, "sqlite", fast=False)  # Feast's apply, materialize and reads on the new layout
    assert reads[-1][:2] == feast_reads[-1][:2]
    schema = {name: sql for _, name, _, sql in _sqlite_dump(ws)["schema"]}
    for table in ("propel_tiny", "propel_shops"):
        assert schema[table].endswith("WITHOUT ROWID") and schema[f"{table}_ek"].endswith("WHERE 0"), schema


def test_unsupported_view_falls_back_to_feast(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="propel.featurestore.online_write"):
        got = _run_tiny(Workspace.resolve(tmp_path / "ws"), "sqlite", fast=True, float32=True)
    assert {m.split()[1] for m in _stock_paths(caplog)} == {"tiny"}, "the Float32 view went through Feast, the other did not"
    assert got[0][0]["x"][4] == pytest.approx(1 / 3, rel=1e-6) and got[0][0]["n"][0] == -10


def test_missing_private_feast_symbol_falls_back_to_public_api(tmp_path, monkeypatch, caplog):
    """A Feast release without one of the private helpers: one warning, then Feast's stock engine and
    `get_online_features` give the same answers (the readers inside _run_tiny compare them with Feast's)."""
    from propel.featurestore import feast_private

    expected = _run_tiny(Workspace.resolve(tmp_path / "stock"), "sqlite", fast=False)
    monkeypatch.setitem(feast_private.SYMBOLS, "mmh3", "feast.infra.online_stores.helpers:_renamed_mmh3")
    feast_private.lookup.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            got = _run_tiny(Workspace.resolve(tmp_path / "fallback"), "sqlite", fast=True)
            reader = OnlineReader(fstore.feature_store(Workspace.resolve(tmp_path / "fallback"), "sqlite"), "tiny_service",
                                  key="person_id")
    finally:
        feast_private.lookup.cache_clear()
    assert got == expected
    assert reader.through_feast
    assert caplog.text.count("has no feast.infra.online_stores.helpers:_renamed_mmh3") == 1, "warned once"
    assert {m.split()[1] for m in _stock_paths(caplog)} == {"tiny", "shops"}
    assert "this Feast lacks mmh3" in caplog.text

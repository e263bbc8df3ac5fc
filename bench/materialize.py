"""Materialization throughput: `propel.featurestore.online_write` against Feast's stock path, SQLite and Redis.

    python bench/materialize.py WORKSPACE [sqlite|redis ...]     time the workspace as built (fast path)
    python bench/materialize.py --synthetic N DIR [--stock]     N synthetic customers, both stores (and stock)
    python bench/materialize.py --sqlite-floor WORKSPACE         SQLite's own insert time for the store's layout

`measure(ws, online)` empties the online store first (Feast teardown + apply, not timed), so every
figure is a full load. The synthetic workspace is a small real build whose latest customer snapshot
and profile are replaced by N rows with the real feature columns (real rows, new ids), which is
enough to extrapolate to 1M without running the whole pipeline. Redis comes from PROPEL_REDIS_URL.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb

from propel.featurestore import store as fstore
from propel.features.asof import as_of
from propel.features.build import build, load_catalog
from propel.config import Workspace


def measure(ws: Workspace, online: str, stock: bool = False) -> dict:
    """Load every view into an emptied online store; entities = customers in the latest snapshot.

    CPU seconds (this process, and the Redis server's own) are there for a shared machine, where
    wall time depends on the neighbours.
    """
    if ws.feast_registry(online).exists():
        fstore.feature_store(ws, online).teardown()
    fstore.apply(ws, online)
    server_cpu = _redis_cpu(ws) if online == "redis" else 0.0
    started, cpu = time.perf_counter(), time.process_time()
    if stock:
        _stock_materialize(ws, online)
    else:
        fstore.materialize(ws, online)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    entities = len(as_of(ws, date.fromisoformat(load_catalog(ws)['cutoffs'][-1]), columns=[]))
    features = sum(len(v.features) for v in fstore.feature_store(ws, online).list_feature_views())
    out = {"online": online, "path": "stock" if stock else "fast", "entities": entities, "features": features,
           "seconds": round(seconds, 2), "entities_per_s": round(entities / seconds), "cpu_seconds": round(cpu, 2)}
    if online == "redis":
        out["redis_cpu_seconds"] = round(_redis_cpu(ws) - server_cpu, 2)
    return out


def _redis_cpu(ws: Workspace) -> float:
    store = fstore.feature_store(ws, "redis")
    info = store._get_provider().online_store._get_client(store.config.online_store).info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def _stock_materialize(ws: Workspace, online: str) -> None:
    """Feast's own `materialize` with its stock engine, view by view, over the interval
    propel.featurestore.store.materialize uses."""
    store = fstore.feature_store(ws, online, fast=False)
    end = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]).replace(tzinfo=timezone.utc) + timedelta(seconds=1)
    for view in store.list_feature_views():
        store.materialize(start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=end, feature_views=[view.name])


def sqlite_floor(ws: Workspace, sample: int = 50_000) -> dict:
    """The least any writer can take for the SQLite layout: SQLite itself copying the first `sample`
    materialized customers' rows (sorted, one row per feature, the store's table and indexes) into an empty
    copy of the table, with no Python in the loop. Run after `measure(ws, "sqlite")`."""
    import sqlite3
    import tempfile

    from feast.infra.online_stores.helpers import compute_table_id

    store = fstore.feature_store(ws, "sqlite")
    table = compute_table_id(store.config.project, store.get_feature_view("customer_features"))
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db")
        db.execute("ATTACH DATABASE ? AS src", (str(store.config.online_store.path),))
        for (ddl,) in db.execute("SELECT sql FROM src.sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL",
                                 (table,)).fetchall():
            db.execute(ddl)  # CREATE TABLE / CREATE INDEX without a schema name land in main
        db.execute("PRAGMA synchronous = OFF")
        db.execute(f"CREATE TEMP TABLE rows AS SELECT * FROM src.{table} WHERE entity_key IN "
                   f"(SELECT DISTINCT entity_key FROM src.{table} ORDER BY entity_key LIMIT {sample}) "
                   "ORDER BY entity_key, feature_name")
        n = db.execute("SELECT count(*) FROM rows").fetchone()[0]
        started = time.perf_counter()
        with db:
            db.execute(f"INSERT INTO main.{table} SELECT * FROM rows")
        seconds = time.perf_counter() - started
    return {"online": "sqlite", "path": "floor (SQLite inserting pre-encoded rows)", "entities": sample, "rows": n,
            "seconds": round(seconds, 2), "rows_per_s": round(n / seconds), "seconds_per_1m_entities":
            round(seconds * 1_000_000 / sample, 1)}


def synthetic(root: Path, customers: int) -> Workspace:
    """A workspace whose latest snapshot and profile hold `customers` rows copied from a small real build."""
    from propel.demo.generate import generate
    from propel.lake.ingest import ingest

    shutil.rmtree(root, ignore_errors=True)
    generate(root / "raw", customers=1500, days=120, seed=3, fmt="parquet")
    ws = Workspace.resolve(root / "ws")
    ingest(root / "raw", ws)
    build(ws, every_days=7, snapshots=1)
    latest = ws.customer_snapshots / f"{load_catalog(ws)['cutoffs'][-1]}.parquet"  # the one cutoff: every customer
    for path in (latest, ws.profile):
        tmp = path.with_suffix(".tmp")
        duckdb.sql(f"""COPY (SELECT printf('S%09d', i) AS customer_id, s.* EXCLUDE (customer_id, k)
                            FROM range({customers}) r(i)
                            JOIN (SELECT *, row_number() OVER () - 1 AS k FROM read_parquet('{path}')) s
                              ON s.k = i % (SELECT count(*) FROM read_parquet('{path}')))
                       TO '{tmp}' (FORMAT parquet)""")
        tmp.replace(path)
    return ws


def main(argv: list[str]) -> None:
    if argv[:1] == ["--sqlite-floor"]:
        out = json.dumps(sqlite_floor(Workspace.resolve(argv[1])))
        (Path(argv[1]) / "bench_sqlite_floor.json").write_text(out)
        print(out, flush=True)
        return
    if argv[:1] == ["--synthetic"]:
        ws = synthetic(Path(argv[2]), int(argv[1]))
        paths = (False, True) if "--stock" in argv else (False,)
        runs = [(online, stock) for online in ("sqlite", "redis") for stock in paths]
    else:
        ws = Workspace.resolve(argv[0])
        runs = [(online, False) for online in (argv[1:] or ["sqlite", "redis"])]
    for online, stock in runs:
        print(json.dumps(measure(ws, online, stock)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Apache Spark (issue 21): `propel features build --engine spark` writes the files the DuckDB build writes, value
for value, and a training set fetched through Feast's Spark offline store equals the one from its DuckDB store.
One Spark session (local[2]) for the module; the slow tests share one small generated workspace."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from propel.cli import app
from propel.config import Workspace
from propel.features.asof import as_of
from propel.features.build import build
from propel.lake.ingest import ingest
from tests.helpers import copy_workspace

# a short window and horizon, so churn has labels within the generated 75 days
SETTINGS = '[train]\nchurn_horizon_days = 14\nchurn_lookback_days = 30\n'


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from propel.lake.spark import session

    session = session("local[2]", **{"spark.sql.shuffle.partitions": "1",  # small data: start and plan fast
                                     "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 "
                                                                      "-XX:ReservedCodeCacheSize=256m"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def duck(tmp_path_factory) -> Workspace:
    """A small generated workspace built with DuckDB: two snapshots two weeks apart, so the second is reached by
    a step (days entering and leaving the windows) from the first, built from scratch."""
    from propel.demo.generate import generate

    raw = tmp_path_factory.mktemp("spark_raw") / "raw"
    generate(raw, customers=300, days=75, seed=5, fmt="csv")
    ws = Workspace.resolve(tmp_path_factory.mktemp("spark_duck") / "ws")
    ingest(raw, ws)
    ws.config_file.write_text(SETTINGS)
    build(ws, every_days=14, snapshots=2)
    return ws


def _table(path) -> pd.DataFrame:
    df = pq.read_table(path).to_pandas()
    return df.sort_values(df.columns[0], ignore_index=True)


@pytest.mark.slow
def test_spark_build_writes_the_duckdb_build_value_for_value(duck, spark, tmp_path):
    ws = copy_workspace(duck, tmp_path / "ws")
    shutil.rmtree(ws.features)
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "features", "build", "--engine", "spark",
                                      "--every-days", "14", "--snapshots", "2"])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(duck.features) for p in duck.features.rglob("*") if p.is_file())
    assert sorted(p.relative_to(ws.features) for p in ws.features.rglob("*") if p.is_file()) == files
    assert len([f for f in files if f.parts[0] == "customer_features"]) == 2
    assert json.loads(ws.catalog.read_text()) == json.loads(duck.catalog.read_text())
    for rel in files:
        if rel.suffix != ".parquet":
            continue
        want, got = pq.read_schema(duck.features / rel), pq.read_schema(ws.features / rel)
        assert [(f.name, f.type) for f in got] == [(f.name, f.type) for f in want], rel
        want, got = _table(duck.features / rel), _table(ws.features / rel)
        assert len(want) > (100 if rel.parts[0] != "item_features" else 0), rel
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-9, obj=str(rel))
    # the cases the SQL's DuckDB-isms matter for have data: date differences, the top category, windows leaving
    last = as_of(ws, date.fromisoformat(json.loads(ws.catalog.read_text())["cutoffs"][-1]))
    assert (last["days_since_last_purchase"] < 9999).any() and (last["tenure_days"] > 0).any()
    assert last["top_category_365d"].ne("none").any() and (last["ipt_std_days_365d"] > 0).any()
    assert (last["events_30d"] > last["events_web_7d"]).any()


@pytest.mark.slow
def test_training_set_through_the_spark_offline_store_equals_the_duckdb_one(duck, spark, tmp_path):
    from propel.featurestore import store as fstore
    from propel.training import churn

    got = {}
    for offline in ("duckdb", "spark"):
        ws = copy_workspace(duck, tmp_path / offline / "ws")
        ws.config_file.write_text(f'{SETTINGS}[feast]\noffline = "{offline}"\n')
        fstore.apply(ws)
        store = fstore.feature_store(ws)
        assert store.config.offline_store.type == offline
        assert type(store.get_data_source("customer_features")).__name__ == ("SparkSource" if offline == "spark"
                                                                             else "FileSource")
        entity, _, _ = churn.entity_rows(ws)  # what `propel train churn` fetches
        got[offline] = fstore.historical_features(store, churn.SERVICE, entity)
    want = got["duckdb"]
    assert len(want) > 50 and want["label"].nunique() == 2 and want["purchases_30d"].notna().mean() > 0.5
    pd.testing.assert_frame_equal(got["spark"], want, check_exact=False, rtol=0, atol=1e-9)


# DuckDB-only SQL the build uses, with data where the engines could differ (NULLs, ties, DESC keys)
DUCKDB_ISMS = [
    "SELECT DATE '2025-03-10' - DATE '2025-03-01', DATE '2025-03-10' - 3",
    "SELECT k, day - lag(day) OVER (PARTITION BY k ORDER BY day) AS gap FROM (SELECT k, CAST(ts AS DATE) AS day FROM "
    "(VALUES ('a', TIMESTAMP '2025-01-01 10:00'), ('a', TIMESTAMP '2025-01-05 23:59'), ('b', TIMESTAMP '2025-02-01 00:00'))"
    " t(k, ts)) ORDER BY k, gap NULLS FIRST",
    "SELECT k, first(v ORDER BY s DESC, v) AS top, count(*) FILTER (WHERE s > 1) AS n FROM (VALUES ('a', 'x', 2.0), "
    "('a', 'y', 2.0), ('a', 'z', 1.0), ('b', 'w', NULL), ('b', 'q', 1.0)) t(k, v, s) GROUP BY ALL ORDER BY k",
    "SELECT greatest(CAST(NULL AS DATE), DATE '2025-01-01'), least(NULL, 2), 7 / 2, CAST(1 AS BIGINT) / 4",
    "WITH m AS MATERIALIZED (SELECT 1 AS k) SELECT * EXCLUDE (b) RENAME (c AS d) FROM (SELECT 1 AS k, 2 AS b, 3 AS c) "
    "ANTI JOIN (SELECT 2 AS k) USING (k) SEMI JOIN m USING (k)",
]


@pytest.mark.slow
def test_the_duckdb_isms_of_the_build_mean_the_same_on_spark(spark):
    import duckdb

    from propel.features.spark import SparkConnection

    con, duck = SparkConnection(spark), duckdb.connect()
    for sql in DUCKDB_ISMS:
        assert con.execute(sql).fetchall() == duck.execute(sql).fetchall(), sql
    with pytest.raises(duckdb.ConversionException, match="Decimal"):  # build.py names the cause and the fix
        con.execute("CREATE OR REPLACE TEMP TABLE t AS SELECT CAST(1e15 AS DECIMAL(18, 6)) AS x")


def test_unknown_engine_and_offline_store_are_named(ws):
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "features", "build", "--engine", "flink"])
    assert result.exit_code == 2 and "unknown engine 'flink'; use one of duckdb, spark" in result.output
    ws.config_file.parent.mkdir(parents=True, exist_ok=True)
    ws.config_file.write_text('[feast]\noffline = "hive"\n')
    with pytest.raises(ValueError, match="feast.offline must be duckdb or spark, not 'hive'"):
        ws.settings()


def test_the_moved_spark_master_setting_says_where_it_went(ws):
    ws.config_file.parent.mkdir(parents=True, exist_ok=True)
    ws.config_file.write_text('[score]\nspark_master = "yarn"\n')
    with pytest.raises(ValueError, match=r"score.spark_master: this setting moved to \[spark\] master"):
        ws.settings()
    ws.config_file.write_text('[spark]\nmaster = "yarn"\n')
    assert ws.settings().spark.master == "yarn"


def test_without_pyspark_spark_commands_say_how_to_install_it(ws, monkeypatch):
    from propel.featurestore import store as fstore
    from propel.lake.spark import session

    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'propel\[spark\]'"):
        session()
    ws.config_file.parent.mkdir(parents=True, exist_ok=True)
    ws.config_file.write_text('[feast]\noffline = "spark"\n')
    with pytest.raises(ValueError, match=r"pip install 'propel\[spark\]'"):
        fstore.repo_config(ws)

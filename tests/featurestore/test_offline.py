"""Training sets through Propel's offline store (DuckDB's ASOF join) equal Feast's stock DuckDB (ibis) store's.

The stock store pairs every entity row with every earlier feature row of its entity; Propel's finds the newest
one with `ASOF LEFT JOIN` (propel/featurestore/offline.py). Same rows, same values, same order, same nulls.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.repo_config import RepoConfig
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore
from feast.types import Float64, Int64, String

from propel.features.build import load_catalog
from propel.featurestore import store as fstore
from propel.featurestore.offline import AsofDuckDBOfflineStore

STOCK = "duckdb"
ASOF = "propel.featurestore.offline.AsofDuckDBOfflineStore"


def _tiny_store(tmp_path, offline: str, ttl: timedelta) -> FeatureStore:
    """A one-view Feast repo over a hand-written Parquet file with a created timestamp."""
    rows = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b"],
        "event_timestamp": pd.to_datetime(["2025-01-01", "2025-01-05", "2025-01-05", "2025-01-10",
                                           "2025-01-03", "2025-01-20"], utc=True),
        "created": pd.to_datetime(["2025-01-01", "2025-01-05", "2025-01-06", "2025-01-10",
                                   "2025-01-03", "2025-01-20"], utc=True),
        "score": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0],
        "level": [1, 2, 3, 4, 10, 20],
        "name": ["a1", "a2", "a3", "a4", "b1", "b2"],
    })
    path = tmp_path / "rows.parquet"
    if not path.exists():
        rows.to_parquet(path)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(name="user_stats", entities=[user], ttl=ttl,
                       schema=[Field(name="score", dtype=Float64), Field(name="level", dtype=Int64),
                               Field(name="name", dtype=String)],
                       source=FileSource(path=str(path), timestamp_field="event_timestamp",
                                         created_timestamp_column="created"))
    repo = tmp_path / offline.rsplit(".", 1)[-1]
    repo.mkdir(exist_ok=True)
    store = FeatureStore(repo_path=str(repo), config=RepoConfig(
        repo_path=repo, project="tiny", provider="local", registry=str(repo / "registry.db"),
        offline_store={"type": offline}, online_store={"type": "sqlite", "path": str(repo / "online.db")},
        entity_key_serialization_version=3))
    store.apply([user, view])
    return store


@pytest.mark.parametrize("ttl_days", [0, 3])
def test_ttl_ties_and_unknown_entities_as_feasts_stock_join(tmp_path, ttl_days):
    entity = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b", "ghost", "a", "b"],
        "event_timestamp": pd.to_datetime(["2025-01-04", "2025-01-05", "2025-01-09", "2025-01-20", "2025-01-02",
                                           "2025-01-07", "2025-01-10", "2024-12-31", "2025-01-21"], utc=True),
    }).assign(row=range(9))
    features = ["user_stats:score", "user_stats:level", "user_stats:name"]
    got = {}
    for offline in (STOCK, ASOF):
        store = _tiny_store(tmp_path, offline, timedelta(days=ttl_days))
        job = store.get_historical_features(entity_df=entity, features=features, full_feature_names=True)
        got[offline] = job.to_df().sort_values("row").reset_index(drop=True)
        fstore._release_offline_connection()
    assert type(_tiny_store(tmp_path, ASOF, timedelta(0))._get_provider().offline_store) is AsofDuckDBOfflineStore
    pd.testing.assert_frame_equal(got[ASOF], got[STOCK])
    # the later-created of two rows at one time wins; before a first row, for an unknown entity: nothing
    names = got[ASOF]["user_stats__name"].tolist()
    expected = ["a1", "a3", "a3", "a4", None, "b1", None, None, "b2"]
    if ttl_days:  # older than the TTL at the entity row's time: expired
        expected = ["a1", "a3", None, None, None, None, None, None, "b2"]
    assert names == expected


@pytest.mark.slow  # Feast retrieval, two stores, two services
def test_training_sets_equal_feasts_stock_join(built_features, copy_of):
    ws = copy_of(built_features)
    fstore.apply(ws)
    ours, stock = fstore.feature_store(ws), fstore.feature_store(ws, fast=False)
    assert type(ours._get_provider().offline_store) is AsofDuckDBOfflineStore
    assert type(stock._get_provider().offline_store) is DuckDBOfflineStore
    cutoffs = pd.to_datetime(load_catalog(ws)["cutoffs"])
    customers = pd.read_parquet(ws.customer_snapshots / f"{cutoffs[-1].date()}.parquet")["customer_id"].unique()
    rng = np.random.default_rng(3)
    n = 4 * len(customers)
    # at cutoffs, between them, before the first one (no row yet) and for an unknown customer; shuffled
    moments = cutoffs.append([cutoffs + pd.Timedelta(hours=13), pd.DatetimeIndex([cutoffs[0] - pd.Timedelta(days=3)])])
    entity = pd.DataFrame({"customer_id": np.append(rng.choice(customers, n), "ghost"),
                           "event_timestamp": moments[rng.integers(len(moments), size=n + 1)]})
    assert (entity["event_timestamp"] < cutoffs[0]).sum() > 10
    for service in ("churn_v1", "propensity_v1"):
        got, expected = (fstore.historical_features(s, service, entity) for s in (ours, stock))
        assert list(got.columns) == list(expected.columns) and len(expected.columns) > 30, service
        assert got["customer_id"].tolist() == entity["customer_id"].tolist()
        pd.testing.assert_frame_equal(got, expected, obj=service)
        early = (entity["event_timestamp"] < cutoffs[0]).to_numpy()
        assert got.loc[early, "purchases_30d"].isna().all() and np.isnan(got["purchases_30d"].iloc[-1]), \
            "rows before a customer's first row and an unknown customer get Feast's nulls"
    # straight through Feast, with full feature names: the same frames
    service = ours.get_feature_service("churn_v1")
    frames = []
    for s in (ours, stock):
        df = entity.assign(request_ts=entity["event_timestamp"], row=range(len(entity)))
        frames.append(s.get_historical_features(entity_df=df, features=service, full_feature_names=True)
                      .to_df().sort_values("row").reset_index(drop=True))
        fstore._release_offline_connection()
    assert "customer_clock__days_since_last_purchase" in frames[0]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # customer_clock: Propel's store computes it in its query (asof.clock_sql), Feast's stock store through the
    # view's pandas function; request times at, just before and after midnights, and mid-day, to the microsecond
    shift = pd.to_timedelta(rng.choice([0, -1, 1, 36_000_000_123], len(entity)), unit="us")
    df = entity.assign(request_ts=entity["event_timestamp"] + shift, row=range(len(entity)))
    jobs = [s.get_historical_features(entity_df=df, features=service) for s in (ours, stock)]
    assert "customer_clock" not in [v.name for v in jobs[0].on_demand_feature_views], "computed in the query"
    assert "customer_clock" in [v.name for v in jobs[1].on_demand_feature_views]
    frames = [job.to_df().sort_values("row").reset_index(drop=True) for job in jobs]
    fstore._release_offline_connection()
    assert frames[0]["days_since_last_purchase"].nunique() > 10
    pd.testing.assert_frame_equal(frames[0], frames[1])

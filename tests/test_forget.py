"""Right to be forgotten, end to end: lake, quarantine, features, online store, and re-ingest."""

from __future__ import annotations

import pandas as pd
import pytest

from propel.featurestore import store as fstore
from propel.features.build import build
from propel.forget import forget
from propel.lake.ingest import ingest
from tests.helpers import NOW, lake_frame, write

EVENTS = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,session_id"


def _setup(ws, raw, online):
    write(raw, "customers.csv", "customer_id,signup_at,tier\nC1,2025-01-01,gold\nC2,2025-01-01,silver\nC9,2025-01-01,bronze")
    write(raw, "identities.csv", "identity_type,identity_value,linked_type,linked_value,observed_at\n"
                                 "customer_id,C1,email,gone@example.com,2025-01-01\ncustomer_id,C9,customer_id,C1,2025-01-02")
    write(raw, "events.csv", f"""
        {EVENTS}
        e1,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e2,2025-03-01T10:01:00Z,email,gone@example.com,,web,login,,,,s1
        e3,2025-03-02T10:00:00Z,,,C1,store,purchase,I1,1,10,
        e4,2025-03-02T10:00:00Z,,,C2,store,purchase,I1,1,10,
        e5,2025-03-02T10:00:00Z,,,C1,store,purchase,I1,1,-3,
    """)
    ingest(raw, ws, now=NOW)
    build(ws, every_days=7, snapshots=2)
    fstore.apply(ws, online)
    fstore.materialize(ws, online)


def _forget_end_to_end(ws, raw, online):
    _setup(ws, raw, online)
    store = fstore.feature_store(ws, online)
    assert fstore.online_features(store, "churn_v1", ["C1", "C2"])[1] == []
    report = forget(ws, ["C9", "nobody"], online)  # C9 was merged into C1: the whole person goes
    assert report.customers == ["C1"] and report.not_found == ["nobody"]
    assert report.lake_rows["events"] == 3 and report.lake_rows["quarantine"] == 1
    assert report.online_rows > 0 and report.feature_rows > 0
    assert lake_frame(ws, "SELECT DISTINCT customer_id FROM events").values.tolist() == [["C2"]]
    assert lake_frame(ws, "SELECT customer_id FROM customers").values.tolist() == [["C2"]]
    assert lake_frame(ws, f"SELECT count(*) FROM read_parquet('{ws.lake}/quarantine/*.parquet')").iloc[0, 0] == 0
    assert lake_frame(ws, "SELECT count(*) FROM identity_map WHERE customer_id = 'C1'").iloc[0, 0] == 0
    assert lake_frame(ws, f"SELECT count(*) FROM read_parquet(['{ws.features}/customer_features/*.parquet', "
                      f"'{ws.features}/customer_profile.parquet'], union_by_name=true) WHERE customer_id = 'C1'").iloc[0, 0] == 0
    assert fstore.online_features(store, "churn_v1", ["C1", "C2"])[1] == ["C1"]

    # The same rows delivered again (as Parquet, so not skipped as already loaded) do not bring C1 back.
    for p in list(raw.glob("*.csv")):
        pd.read_csv(p, dtype=str).to_parquet(p.with_name(p.stem + "_again.parquet"), index=False)
        p.unlink()
    again = ingest(raw, ws, now=NOW)
    assert again.tables["events"].forgotten == 4 and again.tables["events"].reconciles()
    assert again.tables["customers"].forgotten == 2
    assert lake_frame(ws, "SELECT count(*) FROM identity_map WHERE customer_id IN ('C1', 'C9')").iloc[0, 0] == 0


def test_forget_sqlite(ws, raw):
    _forget_end_to_end(ws, raw, "sqlite")


@pytest.mark.redis
def test_forget_redis(ws, raw, redis_url, monkeypatch):
    monkeypatch.setenv("PROPEL_REDIS_URL", redis_url)
    _forget_end_to_end(ws, raw, "redis")

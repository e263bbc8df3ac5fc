"""Change-only feature rows: the features as of T equal a full snapshot at T, value for value (issue 21).

A build's first cutoff writes every entity (all are new) from scratch, so a build whose first cutoff is T is a
full snapshot at T: for every weekly cutoff, the weekly build read as of T must equal it, for customers and
items, every feature. Feast's point-in-time join (training sets) and online reads at T must give the same.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from propel.features.asof import as_of, as_of_sql
from propel.features.build import build, load_catalog
from propel.features.definitions import CUSTOMER_FEATURES, ITEM_FEATURES, clock_features, stored_features
from propel.featurestore import store as fstore


def _full_snapshot(ws, copy_of, T: date, latest: date) -> tuple:
    """A from-scratch build whose first cutoff is T: (its workspace, rows its first table file holds)."""
    scratch = copy_of(ws)
    step = (latest - T).days
    build(scratch, every_days=step or 7, snapshots=2 if step else 1)
    assert load_catalog(scratch)["cutoffs"][0] == T.isoformat()
    return scratch, len(pd.read_parquet(scratch.customer_snapshots / f"{T}.parquet"))


def test_tables_hold_changed_rows_and_stored_days(built_features):
    ws = built_features
    cutoffs = [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]
    stored = [f.name for f in stored_features(CUSTOMER_FEATURES)]
    assert {"last_purchase_day", "first_seen_day"} <= set(stored) and "days_since_last_purchase" not in stored
    everyone = sum(len(as_of(ws, T, columns=[])) for T in cutoffs)
    written = sum(len(pd.read_parquet(ws.customer_snapshots / f"{T}.parquet")) for T in cutoffs)
    assert written < 0.8 * everyone, (written, everyone)
    for prev, T in zip(cutoffs, cutoffs[1:]):
        rows = pd.read_parquet(ws.customer_snapshots / f"{T}.parquet")
        assert list(rows.columns) == ["customer_id", "event_timestamp", *stored]
        before = duckdb.sql(as_of_sql(ws, prev, stored=True)).df().set_index("customer_id")
        known = rows[rows["customer_id"].isin(before.index)].set_index("customer_id")
        # every row of a known customer changes at least one stored value: no row repeats the previous one
        same = (known[stored].fillna(-1e18) == before.loc[known.index, stored].fillna(-1e18)).all(axis=1)
        assert not same.any(), known.index[same][:5].tolist()


@pytest.mark.slow  # one build per cutoff
def test_as_of_every_cutoff_equals_a_full_snapshot(built_features, copy_of):
    ws = built_features
    cutoffs = [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]
    for T in cutoffs:
        scratch, rows = _full_snapshot(ws, copy_of, T, cutoffs[-1])
        for entity in ("customer", "item"):
            got, full = as_of(ws, T, entity), as_of(scratch, T, entity)
            assert len(full) > 100 and list(got.columns) == [full.columns[0], "event_timestamp", *(
                f.name for f in (CUSTOMER_FEATURES if entity == "customer" else ITEM_FEATURES))]
            # floats to 1e-12: DuckDB's parallel sums of doubles (the category mix) may differ in the last bit
            # from run to run, as two full builds' did; everything else exactly
            pd.testing.assert_frame_equal(got, full, check_exact=False, rtol=1e-12, atol=0,
                                          obj=f"{entity} features as of {T}")
        assert rows == len(as_of(scratch, T)), "a first cutoff writes every customer"


def test_clock_features_count_from_T(built_features):
    """Between cutoffs nothing is stored; the days since count on from the newest row, tenure too."""
    ws = built_features
    T = date.fromisoformat(load_catalog(ws)["cutoffs"][-1])
    at, later = as_of(ws, T), as_of(ws, T + timedelta(days=3))
    clock = [f.name for f in clock_features(CUSTOMER_FEATURES) if f.counts_from]
    moved = at[clock].where(at[clock] == 9999, at[clock] + 3)
    pd.testing.assert_frame_equal(later[clock], moved)
    others = [c for c in at.columns if c not in clock and c not in ("event_timestamp", "overdue_ratio")]
    pd.testing.assert_frame_equal(later[others], at[others])
    assert (later["event_timestamp"] == pd.Timestamp(T + timedelta(days=3))).all()
    assert as_of(ws, date(2000, 1, 1)).empty, "before the first cutoff: nobody"


def test_features_built_by_an_older_propel_ask_for_a_rebuild(built_features, copy_of):
    ws = copy_of(built_features)
    catalog = json.loads(ws.catalog.read_text())
    del catalog["layout"]
    ws.catalog.write_text(json.dumps(catalog))
    with pytest.raises(ValueError, match="older Propel.*propel features build"):
        as_of(ws, date.fromisoformat(catalog["cutoffs"][-1]))


@pytest.mark.slow  # Feast retrieval
def test_training_set_through_feast_equals_the_features_as_of_each_cutoff(built_features, copy_of):
    ws = copy_of(built_features)
    fstore.apply(ws)
    store = fstore.feature_store(ws)
    cutoffs = [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]
    expected = pd.concat([as_of(ws, T) for T in cutoffs], ignore_index=True)
    for service in ("churn_v1", "propensity_v1"):
        got = fstore.historical_features(store, service, expected[["customer_id", "event_timestamp"]])
        assert "last_purchase_day" not in got, "what the clock view computes from is not a feature"
        names = [f.name for f in CUSTOMER_FEATURES]
        assert set(names) <= set(got.columns), service
        for name in names:
            a, b = got[name].to_numpy(), expected[name].to_numpy()
            if expected[name].dtype == object:
                assert (a == b).all(), (service, name)
            else:
                np.testing.assert_array_equal(a.astype(float), b.astype(float), err_msg=f"{service} {name}")
    # a row between cutoffs reads the newest row before it and counts the days to the end of its day
    T = cutoffs[-2]
    row = expected[(expected["event_timestamp"] == pd.Timestamp(T))].head(50)
    noon = row[["customer_id"]].assign(event_timestamp=datetime(T.year, T.month, T.day, 12))
    got = fstore.historical_features(store, "churn_v1", noon)
    assert (got["purchases_365d"].to_numpy() == row["purchases_365d"].to_numpy()).all()
    assert (got["tenure_days"].to_numpy() == row["tenure_days"].to_numpy() + 1).all()

"""Segments: the documented rules on hand-made rows, clustering, and the Feast view on real snapshots."""

from __future__ import annotations

from dataclasses import asdict

import duckdb
import numpy as np
import pandas as pd
import pytest

from propel.analytics import segments
from propel.featurestore import store as fstore
from propel.features.definitions import SEGMENT_FEATURES, SEGMENT_RULES
from propel.config import AnalyticsSettings, Workspace
from tests.helpers import copy_workspace

SQL = {f.name: f.sql.format(**asdict(AnalyticsSettings())) for f in SEGMENT_FEATURES}


def _eval(feature: str, rows: list[dict]) -> list:
    frame = pd.DataFrame(rows)
    return duckdb.connect().execute(f"SELECT {SQL[feature]} AS v FROM frame").df()["v"].tolist()


def test_quintiles_rank_buyers_and_share_ties():
    frame = pd.DataFrame({"days_since_last_purchase": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 9999],
                          "purchases_365d": [1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 0],
                          "lifetime_purchases": [1] * 10 + [0]})
    con = duckdb.connect()
    con.register("frame", frame)
    r, f = (con.execute(f"SELECT {SQL[n]} FROM frame ORDER BY days_since_last_purchase").df().iloc[:, 0].tolist()
            for n in ("rfm_recency_score", "rfm_frequency_score"))
    assert r == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0], "most recent buyers score 5, never-buyers 0"
    assert f == [2, 2, 2, 2, 2, 2, 4, 4, 5, 5, 0], "six tied at one purchase share their average rank (3.5 of 10)"


def test_named_rfm_segments_follow_the_documented_rules():
    rows = {"champions": (5, 5, 5, 9), "new": (5, 1, 2, 1), "loyal": (4, 3, 3, 5), "potential_loyalists": (4, 2, 2, 3),
            "cant_lose": (1, 5, 4, 9), "at_risk": (2, 3, 3, 4), "hibernating": (2, 2, 1, 2), "lost": (1, 2, 2, 2),
            "prospect": (0, 0, 0, 0)}
    got = _eval("rfm_segment", [dict(zip(("rfm_recency_score", "rfm_frequency_score", "rfm_monetary_score",
                                          "lifetime_purchases"), v)) for v in rows.values()])
    assert got == list(rows)
    assert _eval("rfm_segment", [{"rfm_recency_score": 5, "rfm_frequency_score": 5, "rfm_monetary_score": 5,
                                  "lifetime_purchases": 1}]) == ["new"], "one purchase is new, however large"
    assert {v for v, _, _ in SEGMENT_RULES["rfm_segment"]} == set(rows)


def test_lifecycle_stages():
    base = {"tenure_days": 400, "purchases_30d": 0, "purchases_90d": 0, "lifetime_purchases": 3,
            "days_since_last_purchase": 10, "days_since_last_visit": 5}
    cases = {"new": {"tenure_days": 12}, "reactivated": {"purchases_30d": 1, "purchases_90d": 1},
             "active": {}, "lapsing": {"days_since_last_purchase": 90}, "churned": {"days_since_last_purchase": 200}}
    assert _eval("lifecycle_stage", [base | c for c in cases.values()]) == list(cases)
    never = base | {"lifetime_purchases": 0, "days_since_last_purchase": 9999}
    assert _eval("lifecycle_stage", [never, never | {"days_since_last_visit": 300}]) == ["active", "churned"], \
        "someone who never bought is staged by their visits"


def test_value_tier_uses_churn_score_only_when_there_is_one():
    rows = [(0, 0, 0.9), (500, 5, 0.7), (500, 5, -1), (200, 3, 0.6), (200, 3, 0.2), (50, 2, 0.9)]
    got = _eval("value_tier", [{"revenue_365d": r, "rfm_monetary_score": m, "churn_score": c} for r, m, c in rows])
    assert got == ["none", "high_at_risk", "high", "medium_at_risk", "medium", "low"]


def _behaviour(n: int, rng, app_heavy: bool) -> pd.DataFrame:
    data = {f: rng.gamma(2, 2, n) for f in segments.CLUSTER_FEATURES}
    data.update(share_app_90d=rng.uniform(0.8, 1, n) if app_heavy else rng.uniform(0, 0.2, n),
                share_web_90d=rng.uniform(0, 0.2, n) if app_heavy else rng.uniform(0.8, 1, n), events_90d=np.full(n, 5.0))
    return pd.DataFrame(data)


def test_clusters_are_seeded_keep_their_numbers_and_say_what_distinguishes_them():
    rng = np.random.default_rng(3)
    snap = pd.concat([_behaviour(200, rng, True), _behaviour(300, rng, False)], ignore_index=True)
    snap.loc[500] = 0.0  # no events in 90 days: no cluster
    first, profiles = segments.Clusterer(2, seed=1).fit(snap)
    assert first.iloc[500] == -1 and first.iloc[:200].nunique() == 1 and first.iloc[200:500].nunique() == 1
    app = profiles[first.iloc[0]]
    assert app["customers"] == 200 and "high app share" in app["label"]
    assert first.equals(segments.Clusterer(2, seed=1).fit(snap)[0]), "same seed, same clusters"
    clusterer = segments.Clusterer(2, seed=1)
    clusterer.fit(snap)
    later = snap.sample(frac=1, random_state=0).reset_index(drop=True)  # a new snapshot: same people, reordered
    relabelled, _ = clusterer.fit(later)
    app_rows = later["share_app_90d"] > 0.5
    assert (relabelled[app_rows] == first.iloc[0]).all(), "a cluster keeps its number from one snapshot to the next"


@pytest.fixture(scope="module")
def segmented(champions, tmp_path_factory) -> Workspace:
    """A copy of the shared champions workspace (which stays read-only) with segments built and published."""
    ws = copy_workspace(champions, tmp_path_factory.mktemp("segmented") / "ws")
    segments.build(ws)
    segments.publish(ws)
    return ws


def test_segments_are_written_per_snapshot_and_served_by_feast(segmented):
    files = sorted(segmented.segments.glob("*.parquet"))
    newest = pd.read_parquet(files[-1])
    assert len(files) == 12 and {f.name for f in SEGMENT_FEATURES} <= set(newest.columns)
    assert set(newest["rfm_segment"]) <= {v for v, _, _ in SEGMENT_RULES["rfm_segment"]}
    assert newest["behaviour_cluster"].max() == AnalyticsSettings().clusters - 1
    store = fstore.feature_store(segmented)
    sample = newest.sample(20, random_state=1)
    online, missing = fstore.online_features(store, "segments_v1", sample["customer_id"].tolist())
    assert not missing
    assert online["rfm_segment"].tolist() == sample["rfm_segment"].tolist()
    assert online["lifecycle_stage"].tolist() == sample["lifecycle_stage"].tolist()
    older = pd.read_parquet(files[5])
    entity = older[["customer_id"]].head(30).assign(event_timestamp=older["event_timestamp"].iloc[0] + pd.Timedelta(hours=1))
    history = fstore.historical_features(store, "segments_v1", entity)
    assert history["value_tier"].tolist() == older["value_tier"].head(30).tolist(), "training reads the segments of its time"


def test_churn_scores_only_where_the_champion_learnt_nothing(segmented):
    from propel.analytics import champions

    start = champions.out_of_sample_from(champions.churn_training_rows(segmented))
    for path in sorted(segmented.segments.glob("*.parquet")):
        seg = pd.read_parquet(path)
        scored = seg["churn_score"] >= 0
        assert scored.any() == (pd.Timestamp(path.stem) >= start.tz_localize(None)), path.stem
        at_risk = seg["value_tier"].str.endswith("_at_risk")
        assert (seg.loc[at_risk, "churn_score"] >= AnalyticsSettings().churn_risk).all()


def test_a_snapshot_is_segmented_the_same_whatever_came_after(segmented):
    cutoffs = segments._cutoffs(segmented)
    *_, (t, partial, _) = segments.compute(segmented, cutoffs[:7])
    stored = pd.read_parquet(segmented.segments / f"{t.isoformat()}.parquet")
    pd.testing.assert_frame_equal(partial.reset_index(drop=True), stored, check_dtype=False)


def test_forget_removes_segment_rows(segmented, copy_of):
    from propel.forget import forget

    ws = copy_of(segmented)
    person = pd.read_parquet(sorted(ws.segments.glob("*.parquet"))[-1])["customer_id"].iloc[0]
    forget(ws, [person])
    assert all(person not in set(pd.read_parquet(p)["customer_id"]) for p in ws.segments.glob("*.parquet"))

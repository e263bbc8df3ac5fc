"""Feature store: no leakage, point-in-time training sets, defaults, offline/online consistency."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from propel.features.asof import as_of
from propel.features.build import _entities, _sources, _terms, build, cutoffs, load_catalog, span
from propel.features.definitions import CUSTOMER_FEATURES, NEVER_DAYS, Feature
from propel.lake.ingest import ingest
from propel.featurestore import store as fstore
from propel.lake.tables import Busy, Lake, exclusive
from tests.helpers import BIN, NOW, write, copy_workspace

EVENTS = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,session_id"


def _snapshot(ws, day: str) -> pd.DataFrame:
    return as_of(ws, date.fromisoformat(day)).set_index("customer_id")


@pytest.fixture
def small_lake(ws, raw):
    write(raw, "customers.csv", """
        customer_id,signup_at,tier,city_tier
        C1,2025-01-01,gold,1
        C2,2025-02-01,,2
        NEW,2025-03-15,silver,
    """)
    write(raw, "items.csv", "item_id,category,brand,price\nI1,shoes,nike,10\nI2,books,penguin,5")
    write(raw, "events.csv", f"""
        {EVENTS}
        e1,2025-03-01T10:00:00Z,,,C1,web,product_view,I1,,,s1
        e2,2025-03-01T10:01:00Z,,,C1,web,purchase,I1,1,10,s1
        e3,2025-03-10T09:00:00Z,,,C1,store,purchase,I2,2,10,
        e4,2025-03-20T10:02:00Z,,,C2,app,product_view,I2,,,s2
    """)
    ingest(raw, ws, now=NOW)
    return ws


def test_snapshot_uses_only_events_strictly_before_the_cutoff(small_lake, raw):
    ws = small_lake
    build(ws, every_days=7, snapshots=4)
    # four asked for; 2025-02-28 would precede the first event (2025-03-01), so it is not built
    assert load_catalog(ws)["cutoffs"] == ["2025-03-07", "2025-03-14", "2025-03-21"]
    before = _snapshot(ws, "2025-03-14")
    assert before.loc["C1", "purchases_30d"] == 2 and before.loc["C1", "days_since_last_purchase"] == 4
    # Events at the cutoff instant and after it must not change that snapshot.
    write(raw, "events_late.csv", f"""
        {EVENTS}
        e5,2025-03-14T00:00:00Z,,,C1,web,purchase,I1,1,99,s9
        e6,2025-03-16T00:00:00Z,,,C2,web,purchase,I1,1,99,s9
        e7,2025-03-27T00:00:00Z,,,C2,web,page_view,,,,s9
    """)
    ingest(raw, ws, now=NOW)
    build(ws, every_days=7, snapshots=4)
    assert load_catalog(ws)["cutoffs"][-1] == "2025-03-28"
    after = _snapshot(ws, "2025-03-14")
    pd.testing.assert_frame_equal(before, after)
    assert _snapshot(ws, "2025-03-21").loc["C1", "revenue_30d"] == 119, "the later snapshot does see them"


def test_snapshots_reached_step_by_step_equal_snapshots_built_from_scratch(built_features, tmp_path, copy_of):
    """The build keeps running sums from cutoff to cutoff; a cutoff built first (from scratch) or after a
    longer step (windows entering and leaving overlap) must give the very same rows."""
    weekly = load_catalog(built_features)["cutoffs"]
    ws = copy_of(built_features)
    build(ws, every_days=21, snapshots=2)
    assert load_catalog(ws)["cutoffs"] == [weekly[-4], weekly[-1]]
    for day in (weekly[-4], weekly[-1]):
        stepped, alone = _snapshot(built_features, day), _snapshot(ws, day)
        assert len(alone) > 1000 and (alone["purchases_7d"] > 0).any() and (alone["revenue_365d"] > 0).any()
        pd.testing.assert_frame_equal(stepped, alone)


def test_the_same_lake_builds_the_same_rows_and_values(built_features, copy_of):
    """A batch's queries run on one DuckDB thread, so floats (the mixes' shares and entropies) are summed in one
    order: a re-build keeps the same change rows and values, bit for bit."""
    ws = copy_of(built_features)
    build(ws, every_days=7, snapshots=6)
    for folder in ("customer_snapshots", "item_snapshots"):
        paths = sorted(getattr(built_features, folder).glob("*.parquet"))
        assert len(paths) == 6
        for path in paths:
            again = pq.read_table(getattr(ws, folder) / path.name)
            assert again.num_rows > 10 and again.equals(pq.read_table(path)), path.name


def test_running_sums_with_numpy_equal_duckdbs_window_functions(built_features):
    """The DuckDB build takes its running sums, maxima and carried pair features with numpy; Spark's runs the
    window-function SQL. Both, on DuckDB, give the same change rows (a batch of customers, and the items)."""
    con = Lake(built_features).connect()
    first, latest = span(con)
    cuts = [T for T in cutoffs(latest, 7, 10) if T > first]
    _sources(con)
    for entity, changes, batches in _entities(con, cuts, 7, size=400):
        key = f"{entity}_id"
        where = batches[1] if entity == "customer" else batches[0]
        numpy = changes.changes_arrow(where)
        changes.changes_arrow(batches[0])  # its sums go into the same scratch memory: the rows made must not change
        numpy = numpy.to_pandas()
        assert len(numpy) > 300 and numpy[key].nunique() > 100 and numpy["k"].nunique() == len(cuts)
        _assert_same_values(numpy, con.sql(changes.changes_sql(where)).to_arrow_table().to_pandas(), key, entity)


def _assert_same_values(rows: pd.DataFrame, expected: pd.DataFrame, key: str, what: str) -> None:
    """Two builds' change rows give every entity the same values at every cutoff (its newest row at or before it).
    Floats summed in another order may differ in the last bit, which counts as a change: a row more or less."""
    if expected.empty:
        assert rows.empty, what
        return

    def every_cutoff(rows: pd.DataFrame) -> pd.DataFrame:
        full = pd.MultiIndex.from_product([sorted(expected[key].unique()), range(int(expected["k"].max()) + 1)],
                                          names=[key, "k"])
        return rows.drop(columns="event_timestamp").set_index([key, "k"]).sort_index().reindex(full).groupby(level=0).ffill()

    assert set(rows[key]) == set(expected[key]) and abs(len(rows) - len(expected)) <= len(expected) // 100
    pd.testing.assert_frame_equal(every_cutoff(rows)[list(every_cutoff(expected).columns)], every_cutoff(expected),
                                  check_dtype=False, check_exact=False, rtol=1e-12, obj=what)


def test_numpy_equals_the_window_sql_as_rows_leave_the_year(ws, raw):
    """Over 15 months of history (rows enter and leave the 365-day windows, and count before the first cutoff):
    the category and brand mixes with numpy (DuckDB) and with window functions and a range join (Spark's SQL),
    and the change rows of every customer. A batch of no one gives no rows."""
    from propel.demo.generate import generate

    generate(raw, customers=300, days=450, seed=5, fmt="csv")
    ingest(raw, ws)
    con = Lake(ws).connect()
    first, latest = span(con)
    cuts = [T for T in cutoffs(latest, 7, 70) if T > first]
    _sources(con)
    (_, changes, batches), _ = _entities(con, cuts, 7, size=200)
    for where in [*batches, "pid > 1000000"]:
        for name in ("categories", "brands"):
            numpy = changes._pairs_arrow(name, where).to_pandas()
            changes._pairs(name, where)
            sql = con.sql(f"SELECT pid * {changes.span} + k AS code, * EXCLUDE (pid, k) FROM pf_{name}").to_arrow_table()
            sql = sql.to_pandas().sort_values("code", ignore_index=True)
            pd.testing.assert_frame_equal(numpy.sort_values("code", ignore_index=True), sql, check_exact=False,
                                          rtol=1e-12, obj=f"{name} {where}")
            if where.startswith("pid > 1000000"):
                assert sql.empty
        _assert_same_values(changes.changes_arrow(where).to_pandas(),
                            con.sql(changes.changes_sql(where)).to_arrow_table().to_pandas(), "customer_id", where)
    (left,), = con.execute(f"SELECT count(*) FROM src_cat_daily WHERE day < DATE '{cuts[-1]}' - 365").fetchall()
    assert left > 100  # rows that left the window before the last cutoff


def test_an_aggregate_the_build_cannot_keep_running_is_refused():
    with pytest.raises(ValueError, match="median_basket: `median\\(quantity\\)`.*derived feature"):
        _terms(Feature("median_basket", "float", "median basket", "customer_rfm", "median(quantity)"))


def test_a_sum_out_of_range_names_the_columns_to_check(small_lake, raw):
    write(raw, "events_huge.csv", f"""
        {EVENTS}
        h1,2025-03-02T10:00:00Z,,,C1,web,purchase,I1,1,900000000000,s1
        h2,2025-03-03T10:00:00Z,,,C1,web,purchase,I1,1,900000000000,s1
    """)
    ingest(raw, small_lake, now=NOW)
    with pytest.raises(ValueError, match="out of range.*revenue and quantity"):
        build(small_lake, every_days=7, snapshots=4)


def test_new_customer_gets_defaults_not_nan(small_lake):
    build(small_lake, every_days=7, snapshots=4)
    snap = _snapshot(small_lake, "2025-03-21")
    new = snap.loc["NEW"]
    assert not new.isna().any(), new[new.isna()]
    assert new["days_since_last_purchase"] == NEVER_DAYS and new["purchases_365d"] == 0
    assert new["preferred_channel_90d"] == "none" and new["top_category_365d"] == "none"
    assert new["tenure_days"] == 6
    assert "NEW" not in _snapshot(small_lake, "2025-03-14").index, "no row before the customer existed"
    assert list(snap.columns) == ["event_timestamp"] + [f.name for f in CUSTOMER_FEATURES]


@pytest.mark.slow  # Feast retrieval, in a subprocess too
def test_training_set_one_row_per_entity_row_in_order(small_lake):
    ws = small_lake
    build(ws, every_days=7, snapshots=4)
    fstore.apply(ws)
    store = fstore.feature_store(ws)
    entity = pd.DataFrame({
        "customer_id": ["C2", "C1", "C1", "C1", "ghost", "C1"],
        "event_timestamp": [datetime(2025, 3, 21), datetime(2025, 3, 14), datetime(2025, 3, 16, 12),
                            datetime(2025, 3, 14), datetime(2025, 3, 14), datetime(2025, 3, 13, 23, 59)],
    })
    got = fstore.historical_features(store, "churn_v1", entity)
    assert got["customer_id"].tolist() == entity["customer_id"].tolist()
    assert got["event_timestamp"].dt.tz_localize(None).tolist() == entity["event_timestamp"].tolist()
    # 03-14 and 03-16 read the 03-14 snapshot; 03-13 23:59 still reads 03-07's.
    assert got["purchases_30d"].tolist()[1:4] == [2, 2, 2] and got["purchases_30d"].tolist()[5] == 1
    assert np.isnan(got.loc[4, "purchases_30d"]), "an unknown customer is not invented"
    assert got.loc[1, "tier"] == "gold" and got.loc[0, "city_tier"] == 2
    # a process that retrieved a training set exits quietly (no DuckDB connection left open at shutdown)
    script = ("import pandas as pd, sys; from propel.featurestore import store; from propel.config import Workspace; "
              "ws = Workspace.resolve(sys.argv[1]); store.historical_features(store.feature_store(ws), 'churn_v1', "
              "pd.DataFrame({'customer_id': ['C1'], 'event_timestamp': [pd.Timestamp('2025-03-20')]}))")
    done = subprocess.run([sys.executable, "-c", script, str(ws.root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "leaked" not in done.stderr, done.stderr[-2000:]


def _check_online_matches_latest_snapshot(ws, online: str):
    fstore.apply(ws, online)
    fstore.materialize(ws, online)
    store = fstore.feature_store(ws, online)
    latest = load_catalog(ws)["cutoffs"][-1]
    offline = _snapshot(ws, latest)
    sample = sorted(offline.sample(min(60, len(offline)), random_state=1).index) + ["no-such-customer"]
    # asked at the latest cutoff, the clock features count the days to it, as the snapshot at it does
    at = datetime.fromisoformat(latest).replace(tzinfo=timezone.utc)
    online_df, missing = fstore.online_features(store, "churn_v1", sample, request_ts=at)
    assert missing == ["no-such-customer"]
    online_df = online_df.set_index("customer_id").loc[sample[:-1]]
    for f in CUSTOMER_FEATURES:
        a, b = online_df[f.name].to_numpy(), offline.loc[sample[:-1], f.name].to_numpy()
        if f.dtype == "string":
            assert (a == b).all(), f.name
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9, err_msg=f.name)


@pytest.fixture(scope="module")
def generated_features(tmp_path_factory, built_features):
    """A copy of the session's built features that this module applies and materializes."""
    return copy_workspace(built_features, tmp_path_factory.mktemp("feat") / "ws")


def test_online_equals_latest_offline_sqlite(generated_features):
    _check_online_matches_latest_snapshot(generated_features, "sqlite")


@pytest.mark.redis
def test_online_equals_latest_offline_redis(generated_features, redis_url, monkeypatch):
    monkeypatch.setenv("PROPEL_REDIS_URL", redis_url)
    _check_online_matches_latest_snapshot(generated_features, "redis")


def test_materialize_loads_ttl0_views_whole(generated_features):
    ws = generated_features
    fstore.apply(ws)
    fstore.materialize(ws)
    again = fstore.materialize(ws)
    # ttl 0 views are loaded whole: the profile, and the feature tables (each entity's newest row, however old)
    assert sorted(again["views"]) == ["customer_features", "customer_profile", "item_stats"]


def test_services_pick_their_groups_and_apply_drops_stale_views(generated_features):
    from feast import FeatureView, Field
    from feast.types import Int64

    from propel.featurestore.repo.data_sources import customer_features
    from propel.featurestore.repo.entities import customer
    from propel.features.definitions import FEATURE_GROUPS

    ws = generated_features
    fstore.apply(ws)
    store = fstore.feature_store(ws)
    # each service reads only its groups out of the one customer snapshot view
    from propel.features.definitions import FEATURE_SERVICES

    for service, groups in FEATURE_SERVICES.items():
        if service == "segments_v1":  # registered once `propel segments` ran
            continue
        read = {f.split(":")[1] for f in fstore.service_features(store, service)
                if f.startswith(("customer_features:", "customer_clock:"))}
        assert read == {f.name for f in CUSTOMER_FEATURES if f.group in groups}, service
    assert len(fstore.service_features(store, "churn_v1")) > len(CUSTOMER_FEATURES)  # all of them plus CRM columns
    # a view left over from an older definition (e.g. before views were merged) is removed with its table
    old = FeatureView(name="customer_rfm", entities=[customer], source=customer_features(ws),
                      schema=[Field(name="purchases_7d", dtype=Int64)])
    store.apply([customer, old])
    fstore.apply(ws)
    names = {v.name for v in fstore.feature_store(ws).list_feature_views()}
    assert names == {view for view, _ in FEATURE_GROUPS.values()} - {"customer_segments"}
    materialized = fstore.materialize(ws)
    assert "customer_rfm" not in materialized["views"]


def _all_rows(ws) -> dict:
    """What readers of the feature tables see, at every cutoff, comparable across builds (row order aside)."""
    cutoffs = load_catalog(ws)["cutoffs"]
    return {(entity, T): as_of(ws, date.fromisoformat(T), entity).sort_values(f"{entity}_id").to_dict("records")
            for entity in ("customer", "item") for T in cutoffs}


def test_a_killed_build_leaves_a_whole_one_and_a_second_at_once_is_refused(small_lake):
    """`kill -9` while snapshots are written, and between the swap's two renames: readers see the previous build
    (or, mid-swap, none until the next build puts it back); a re-run gives the same features. A second build
    while one runs is refused at once, naming the first."""
    ws = small_lake
    build(ws, every_days=7, snapshots=4)
    before = _all_rows(ws)

    def killed_at(point: str) -> None:
        proc = subprocess.run([str(BIN / "propel"), "--workspace", str(ws.root), "features", "build", "--snapshots", "4"],
                              env={**os.environ, "PROPEL_CRASH_AT": point}, capture_output=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-2000:]

    killed_at("features_snapshot")
    assert _all_rows(ws) == before, "a build killed midway leaves the previous one whole"
    killed_at("features_swap")
    assert not ws.features.exists() and ws.features.with_name("features.previous").exists()
    build(ws, every_days=7, snapshots=4)
    assert _all_rows(ws) == before, "the re-run gives the same features"
    assert not ws.features.with_name("features.previous").exists()
    assert not ws.features.with_name("features.building").exists()
    assert sorted(p.name for p in ws.features.iterdir()) == ["catalog.json", "customer_features",
                                                             "customer_profile.parquet", "item_features"]

    with exclusive(ws.features_lock, "features build, engine duckdb", Busy):  # as a running build holds it
        with pytest.raises(Busy, match="another feature build is running .features build, engine duckdb, pid"):
            build(ws, every_days=7, snapshots=4)
        proc = subprocess.run([str(BIN / "propel"), "--workspace", str(ws.root), "features", "build"],
                              capture_output=True, text=True, timeout=300)
        said = " ".join((proc.stdout + proc.stderr).split())  # the console may wrap the message
        assert proc.returncode == 2 and "one build at a time" in said and "Traceback" not in said, said
    assert _all_rows(ws) == before

"""The stream consumer (`propel stream run`): real-time features folded from the event log equal a from-scratch
computation with pandas and are read by Feast itself (`customer_realtime:*`) and by serving's one-id read, windows expire by event time and
the state stays bounded, a login carries the anonymous profile's items over, and each event counts exactly once
across `kill -9` and restarts (SQLite state) and across competing consumers (Redis state)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore

from propel.config import Workspace
from propel.featurestore import realtime, store
from propel.lake import events_log, intake
from tests.helpers import BIN

FEATURES = ["last_event_ts", "last_purchase_ts", "events_1h", "events_24h", "sessions_1h", "sessions_24h",
            "purchases_1h", "purchases_24h", "carts_1h", "carts_24h", "recent_views", "recent_purchases"]
NOW = datetime.now(timezone.utc).replace(microsecond=0)
TYPES = ["product_view", "product_view", "product_view", "add_to_cart", "purchase", "page_view"]


@pytest.fixture(scope="module")
def applied(built_features, tmp_path_factory) -> Workspace:
    """Features built and applied (the real-time view registered), no events: tests copy it."""
    from tests.helpers import copy_workspace

    ws = copy_workspace(built_features, tmp_path_factory.mktemp("rt") / "ws")
    store.apply(ws)
    return ws


@pytest.fixture
def ws(applied, copy_of) -> Workspace:
    ws = copy_of(applied)
    ws.config_file.write_text("[stream]\nconsume_batch = 37\nrecent_items = 5\n")
    return ws


def _random_events(n: int, seed: int = 3, prefix: str = "r") -> list[dict]:
    """Events of 25 customers over the last two days, out of order, with sessions (some none)."""
    rng = random.Random(seed)
    return [{"event_id": f"{prefix}{i}", "customer_id": f"RT{rng.randrange(25):02d}", "channel": "web",
             "ts": (NOW - timedelta(seconds=rng.randrange(2 * 86400), microseconds=rng.randrange(10**6))).isoformat(),
             "event_type": rng.choice(TYPES), "item_id": f"I{rng.randrange(40)}",
             "session_id": rng.choice([None, *(f"s{k}" for k in range(8))])} for i in range(n)]


def _post(ws: Workspace, events: list[dict]) -> None:
    """What POST /events does: validate by the ingest rules, append the accepted ones to the log."""
    checked = intake.validate(ws, events)
    assert all(r["status"] == "accepted" for r in checked), [r.get("reason") for r in checked][:3]
    log = events_log.open_log(ws)
    try:
        log.append([r["event"] for r in checked], [r["mapped"] for r in checked])
    finally:
        log.close()


def _consume(ws: Workspace) -> int:
    consumer = realtime.Consumer(ws)
    try:
        return consumer.run(threading.Event(), until_idle=True)
    finally:
        consumer.close()


def _feast_rows(ws: Workspace, ids: list[str]) -> pd.DataFrame:
    """The view as Feast itself reads it: the workspace's repo opened by Feast's FeatureStore."""
    fs = FeatureStore(repo_path=str(ws.feast_repo))
    got = fs.get_online_features(features=[f"customer_realtime:{f}" for f in FEATURES],
                                 entity_rows=[{"customer_id": i} for i in ids]).to_df()
    return got.set_index("customer_id").loc[ids]


def _from_scratch(events: list[dict], recent: int) -> pd.DataFrame:
    """The features computed directly from all the events with pandas, not by folding."""
    df = pd.DataFrame(events)
    df["t"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601").map(lambda x: x.timestamp())
    out = {}
    for cid, g in df.groupby("customer_id"):
        last = g["t"].max()
        row = {"last_event_ts": last, "last_purchase_ts": g.loc[g.event_type == "purchase", "t"].max()}
        for name, seconds in (("1h", 3600), ("24h", 86400)):
            w = g[g["t"] > last - seconds]
            row.update({f"events_{name}": len(w), f"purchases_{name}": int((w.event_type == "purchase").sum()),
                        f"carts_{name}": int((w.event_type == "add_to_cart").sum()),
                        f"sessions_{name}": w["session_id"].dropna().nunique()})
        for col, kind in (("recent_views", "product_view"), ("recent_purchases", "purchase")):
            items = g[g.event_type == kind].groupby("item_id")["t"].max().sort_values(ascending=False)
            row[col] = list(items.index[:recent])
        out[cid] = row
    return pd.DataFrame.from_dict(out, orient="index")


def _assert_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    for f in FEATURES:
        if f.startswith("recent_"):
            assert [list(x or []) for x in got[f]] == list(want[f]), f
        else:
            np.testing.assert_allclose(got[f].astype(float), want[f].astype(float), rtol=0, atol=1e-6, err_msg=f)


def test_folded_features_equal_a_from_scratch_computation_and_feast_reads_them(ws):
    events = _random_events(600)
    for i in range(0, len(events), 100):  # arriving in batches, folded 37 at a time
        _post(ws, events[i:i + 100])
        _consume(ws)
    want = _from_scratch(events, recent=5)
    assert want["purchases_24h"].sum() > 0 and (want["events_1h"] < want["events_24h"]).any()
    _assert_equal(_feast_rows(ws, list(want.index)), want)
    reader = realtime.reader(store.feature_store(ws))  # what /recommend reads per request (one id, no frame)
    _assert_equal(pd.DataFrame([reader.one(p) for p in want.index], index=want.index), want)
    assert [realtime.recent(reader, p) for p in want.index] == list(zip(want["recent_views"], want["recent_purchases"]))
    assert reader.one("nobody") is None and realtime.recent(reader, "nobody") == ([], [])


def test_windows_expire_by_event_time_and_the_state_stays_bounded(ws):
    t0 = NOW - timedelta(days=3)
    base = {"customer_id": "RTW", "channel": "web", "item_id": "I1", "session_id": "a"}
    steps = [(0, "purchase"), (30 * 60, "product_view"), (2 * 3600, "add_to_cart"), (26 * 3600, "product_view")]
    seen = []
    for n, (offset, kind) in enumerate(steps):
        _post(ws, [{**base, "event_id": f"w{n}", "event_type": kind, "ts": (t0 + timedelta(seconds=offset)).isoformat()}])
        _consume(ws)
        seen.append(_feast_rows(ws, ["RTW"]).iloc[0])
    assert [(r.events_1h, r.events_24h) for r in seen] == [(1, 1), (2, 2), (1, 3), (1, 1)]
    assert [r.purchases_24h for r in seen] == [1, 1, 1, 0], "the purchase leaves the 24 h window ..."
    assert seen[-1].last_purchase_ts == t0.timestamp(), "... but stays the last purchase"
    with sqlite3.connect(ws.stream / "realtime.db") as db:
        state = json.loads(db.execute("SELECT body FROM state WHERE profile_id = 'RTW'").fetchone()[0])
    assert len(state["window"]) == 1, "expired window entries are dropped"


def test_a_login_carries_the_anonymous_profiles_items_over(ws):
    device = {"identity_type": "device_id", "identity_value": "rt-dev", "channel": "app", "event_type": "product_view"}
    _post(ws, [{**device, "event_id": "a1", "item_id": "I7", "ts": (NOW - timedelta(minutes=5)).isoformat()}])
    _consume(ws)
    log = events_log.open_log(ws)
    anon = log.read()[-1][1]["profile_id"]
    assert list(_feast_rows(ws, [anon]).iloc[0].recent_views) == ["I7"]
    _post(ws, [{**device, "event_id": "a2", "event_type": "login", "customer_id": "RTL", "ts": NOW.isoformat()}])
    _consume(ws)
    row = _feast_rows(ws, ["RTL"]).iloc[0]
    assert list(row.recent_views) == ["I7"] and row.events_24h == 2


def _cli(ws: Workspace, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "propel"), "--workspace", str(ws.root), "stream", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _committed(ws: Workspace) -> int:
    state = realtime.SQLiteState(ws.stream / "realtime.db")
    try:
        found = state.offset()
        return 0 if found is None else found[1]
    finally:
        state.close()


def test_each_event_counts_once_across_kill_9_and_restarts(ws):
    events = _random_events(1500, seed=5)
    _post(ws, events)
    for point in ("stream_pushed", "stream_committed"):  # killed after a push, then after a commit
        proc = _cli(ws, "--until-idle", env={"PROPEL_CRASH_AT": point})
        assert proc.wait(timeout=120) == -signal.SIGKILL, proc.stderr.read()
    assert _committed(ws) == 37, "the first run committed nothing, the second one step"
    proc = _cli(ws)  # killed from outside mid-run
    deadline = time.monotonic() + 120
    while _committed(ws) < 37 * 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 37 < _committed(ws) < 1500, "killed mid-run"
    proc = _cli(ws, "--until-idle")
    assert proc.wait(timeout=180) == 0, proc.stderr.read()
    want = _from_scratch(events, recent=5)
    _assert_equal(_feast_rows(ws, list(want.index)), want)


def test_redis_state_counts_once_when_two_consumers_race(ws, redis_url):
    """Redis for the log, the consumer state and the online store (Feast's own Redis writer)."""
    redis.Redis.from_url(f"redis://{redis_url}").flushdb()
    ws.config_file.write_text(f'[feast]\nonline = "redis"\nredis_url = "{redis_url}"\n[stream]\nconsume_batch = 37\n'
                              f'recent_items = 5\nbackend = "redis"\nredis_url = "{redis_url}"\n')
    store.apply(ws)
    events = _random_events(400, seed=8)
    _post(ws, events)
    first, second = realtime.Consumer(ws), realtime.Consumer(ws)
    try:
        stale = second.state.offset()
        assert first.step() == 37
        with pytest.raises(realtime.Conflict):  # the second read the offset before the first committed
            second.state.commit(stale, (second.log.log_id, 1), {"RT00": {}}, set())
        stop = threading.Event()
        racing = [threading.Thread(target=c.run, args=(stop, True)) for c in (first, second)]
        for t in racing:
            t.start()
        for t in racing:
            t.join(timeout=120)
    finally:
        first.close()
        second.close()
    want = _from_scratch(events, recent=5)
    _assert_equal(_feast_rows(ws, list(want.index)), want)
    reader = realtime.reader(store.feature_store(ws))  # serving's one-id read, from Redis
    _assert_equal(pd.DataFrame([reader.one(p) for p in want.index], index=want.index), want)
    assert reader.one("nobody") is None

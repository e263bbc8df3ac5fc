"""Right to be forgotten, end to end: lake, quarantine, features, every online store (SQLite and Redis), the event log,
re-ingest; a run stopped half-way finished by the next; and a running server with its recommender packages:
the person is no longer personalised, at once and after a restart, and no artefact keeps their id."""

from __future__ import annotations

import json
import subprocess

import cloudpickle
import httpx
import pandas as pd
import pytest

from propel.featurestore import store as fstore
from propel.features.build import build
from propel.forget import forget
from propel.lake.ingest import ingest
from bench.common import free_port, stop_server
from propel.lake import events_log, intake, tombstones
from propel.lake.tables import Busy, exclusive
from propel.training import registry
from propel.training.recommender_model import EXAMPLE_IDS, load_recommender
from tests.helpers import BIN, NOW, lake_frame, start, write

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
    live = [{"event_id": f"h{i}", "ts": "2025-03-03T10:00:00Z", "channel": "app", "event_type": "product_view", **who}
            for i, who in enumerate([{"customer_id": "C1"}, {"identity_type": "email", "identity_value": "gone@example.com"},
                                     {"customer_id": "C2"}])]  # as POST /events logs them: validated, PII hashed
    events_log.open_log(ws).append([r["event"] for r in intake.validate(ws, live)])
    report = forget(ws, ["C9", "nobody"])  # C9 was merged into C1: the whole person goes
    assert report.logged_events == 2
    assert [e["event_id"] for _, e in events_log.open_log(ws).read()] == ["h2"]
    assert report.customers == ["C1"] and report.not_found == ["nobody"]
    assert report.lake_rows["events"] == 3 and report.lake_rows["quarantine"] == 1
    assert report.online_rows[online] > 0 and report.feature_rows > 0 and list(report.online_rows) == [online]
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
def test_forget_is_refused_while_a_feature_build_runs(ws, raw):
    """A build that read the lake before the tombstones would swap the person's rows back in after forget rewrote
    the feature tables: forget is refused before it changes anything, naming the build, and runs once it ends."""
    _setup(ws, raw, "sqlite")
    with exclusive(ws.features_lock, "features build, engine duckdb", Busy):  # as a running build holds it
        with pytest.raises(Busy, match=r"a feature build is running \(features build, engine duckdb, pid \d+"):
            forget(ws, ["C1"])
        assert not tombstones.keys(ws.tombstones)
        assert lake_frame(ws, "SELECT count(*) FROM customers WHERE customer_id = 'C1'").iloc[0, 0] == 1
    assert forget(ws, ["C1"]).customers == ["C1"]


def test_forget_redis(ws, raw, redis_url, monkeypatch):
    monkeypatch.setenv("PROPEL_REDIS_URL", redis_url)
    _forget_end_to_end(ws, raw, "redis")


@pytest.mark.redis
def test_every_online_store_and_a_second_run_finishes_the_first(ws, raw, redis_url, monkeypatch):
    """SQLite and Redis both in use: both cleaned by one run. A run stopped half-way (Redis down) is finished
    by running it again, and so is the state issue 17 found (lake and identity map clean, Redis still holding
    the key): the tombstones say who was forgotten, so the id is not "not found" and Redis is cleaned."""
    monkeypatch.setenv("PROPEL_REDIS_URL", redis_url)
    _setup(ws, raw, "sqlite")
    fstore.apply(ws, "redis")
    fstore.materialize(ws, "redis")
    stores = {s: fstore.feature_store(ws, s) for s in ("sqlite", "redis")}
    known = {s: lambda s=s: fstore.online_features(stores[s], "churn_v1", ["C1", "C2"])[1] == [] for s in stores}
    assert all(k() for k in known.values())

    monkeypatch.setenv("PROPEL_REDIS_URL", f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ValueError, match="cannot be reached"):
        forget(ws, ["C9"])
    assert tombstones.customer_key("C1") in tombstones.keys(ws.tombstones)  # the server already leaves them out
    assert not known["sqlite"]() and known["redis"]()
    assert lake_frame(ws, "SELECT count(*) FROM identity_map WHERE customer_id = 'C1'").iloc[0, 0] > 0  # lake: last

    monkeypatch.setenv("PROPEL_REDIS_URL", redis_url)
    report = forget(ws, ["C9"])
    assert report.customers == ["C1"] and report.online_rows["redis"] > 0 and report.lake_rows["events"] == 3
    assert not known["sqlite"]() and not known["redis"]()
    assert lake_frame(ws, "SELECT count(*) FROM identity_map WHERE customer_id = 'C1'").iloc[0, 0] == 0

    # issue 17's state: a run that did not clean Redis (here: Redis not in use then) left a clean lake
    registry_file = ws.feast_registry("redis")
    hidden = registry_file.rename(registry_file.with_suffix(".away"))
    first = forget(ws, ["C2"]).online_rows
    assert list(first) == ["sqlite"] and first["sqlite"] > 0
    hidden.rename(registry_file)
    assert fstore.online_features(stores["redis"], "churn_v1", ["C2"])[1] == []  # Redis kept the key
    again = forget(ws, ["C2", "C9"])
    assert again.already == ["C2", "C9"] and again.not_found == [] and again.customers == []
    assert again.online_rows == {"sqlite": 0, "redis": 1}
    assert fstore.online_features(stores["redis"], "churn_v1", ["C2"])[1] == ["C2"]


def test_forget_reaches_the_running_server_and_every_package(champions, copy_of, tmp_path):
    """A person the recommender knows: personalised by a running server; after `propel forget` the popular
    fallback at once (no restart, no reload) and after a restart; no recommender version keeps their rows,
    no input example a real id, no file of the model registry their id; the online store is clean."""
    ws = copy_of(champions)
    model, version = load_recommender(ws)
    person = next(c for c in model.customers if lake_frame(
        ws, f"SELECT count(*) FROM identity_map WHERE customer_id = '{c}'").iloc[0, 0])
    assert model.recommend(person, 5).fallback is None
    log = tmp_path / "server.log"
    proc, url = start([BIN / "propel", "--workspace", ws.root, "serve", "--workers", "1"], log)
    try:
        before = httpx.post(f"{url}/recommend", json={"customer_id": person, "k": 5}, timeout=30).json()
        assert before["fallback"] is False
        done = subprocess.run([BIN / "propel", "--workspace", ws.root, "forget", person], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"v{version} 1" in done.stderr  # its package lost one customer
        after = httpx.post(f"{url}/recommend", json={"customer_id": person, "k": 5}, timeout=30).json()
        assert after["fallback"] is True and after["fallback_reason"] == "unknown_customer"
        assert [i["item_id"] for i in after["items"]] == model.recommend("someone-new", 5).items
        scored = httpx.post(f"{url}/score/churn", json={"customer_ids": [person]}, timeout=30).json()
        assert scored["results"][0]["status"] == 404
    finally:
        stop_server(proc)
    proc, url = start([BIN / "propel", "--workspace", ws.root, "serve", "--workers", "1"], tmp_path / "again.log")
    try:
        restarted = httpx.post(f"{url}/recommend", json={"customer_id": person, "k": 5}, timeout=30).json()
        assert restarted["fallback"] is True
    finally:
        stop_server(proc)

    client = registry.tracking(ws)
    for mv in client.search_model_versions("name = 'recommender'"):
        folder = client.get_model_version_download_uri("recommender", mv.version).removeprefix("file://")
        with open(f"{folder}/python_model.pkl", "rb") as fh:
            package = cloudpickle.load(fh)
        assert person not in set(package.customers) and len(package.customers) == len(model.customers) - 1
        with open(f"{folder}/input_example.json") as fh:
            assert [row[0] for row in json.load(fh)["data"]] == list(EXAMPLE_IDS)
    leaks = subprocess.run(["grep", "-rl", "--", person, str(ws.mlruns)], capture_output=True, text=True).stdout
    assert leaks == ""
    served = subprocess.run(["grep", "-rl", "--", person, str(ws.served_log)], capture_output=True, text=True).stdout
    assert served == ""

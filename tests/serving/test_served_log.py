"""The served-recommendations log: written off the request path by each worker, read back whole (a torn last
line skipped), joined with the events that carry a recommendation_id into impressions, CTR, conversion and
revenue; and a real `propel serve` logging what /recommend answered."""

from __future__ import annotations

import shutil
import time

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.analytics import recommendations
from propel.analytics.report import recommendation_section
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from propel.cli import app
from propel.config import Workspace
from propel.serving import served_log
from tests.helpers import NOW, write, copy_workspace
from tests.helpers import BIN, start, stop


def answer(rid: str, items: list[str], model: str = "als", version: str = "3", fallback: str | None = None,
           customer: str = "C1") -> dict:
    """A /recommend response body."""
    return {"recommendation_id": rid, "customer_id": customer, "model": model, "model_version": version,
            "items": [{"item_id": i, "score": 1.0 / (n + 1), "explored": n == 2} for n, i in enumerate(items)],
            "fallback": fallback is not None, "fallback_reason": fallback}


EVENTS = """
event_id,ts,customer_id,channel,event_type,item_id,revenue,quantity,session_id,recommendation_id
e1,2025-03-03T10:00:00Z,C1,web,recommendation_click,I2,,,s1,r1
e2,2025-03-03T10:05:00Z,C1,web,purchase,I2,30,1,s1,r1
e3,2025-03-04T10:00:00Z,C2,app,recommendation_click,I1,,,s2,r2
e4,2025-03-04T10:01:00Z,C2,app,recommendation_click,I3,,,s2,r2
e5,2025-03-05T10:00:00Z,C2,app,purchase,I9,12,1,s3,r4
e6,2025-03-05T10:00:00Z,C2,app,page_view,,,,s3,
"""


def test_log_written_by_workers_and_joined_with_events(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at\nC1,2025-01-01\nC2,2025-01-01")
    write(raw, "events.csv", EVENTS)
    ingest(raw, ws, now=NOW)
    assert served_log.read(ws) is None, "no log yet"
    first, second = served_log.ServedLog(ws, flush_seconds=0.05), served_log.ServedLog(ws)
    second.name = "other-host-2.jsonl"  # another worker process writes its own file
    first.record(answer("r1", ["I1", "I2", "I3"]))
    first.record(answer("r2", ["I1", "I4", "I3"]))
    deadline = time.monotonic() + 10  # the writer thread appends within flush_seconds
    while (served_log.read(ws) is None or len(served_log.read(ws)) < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    second.record(answer("r3", ["I5", "I6"], model="popular", version="2", fallback="unknown_customer"))
    second.record(answer("r4", ["I9"], model="popular", version="2", fallback="unknown_customer", customer="C2"))
    assert second.flush() == 2 and first.flush() == 0
    first.close()
    files = sorted(ws.served_log.glob("*.jsonl"))
    assert len(files) == 2, "one file per worker and day"
    with files[0].open("a") as fh:
        fh.write('{"recommendation_id": "torn", "served_at": "20')  # a worker killed mid-write
    served = served_log.read(ws)
    assert served["recommendation_id"].tolist() == ["r1", "r2", "r3", "r4"]
    r1 = served.iloc[0]
    assert list(r1["items"]) == ["I1", "I2", "I3"] and list(r1["explored"]) == [False, False, True]
    assert (r1["customer_id"], r1["model"], r1["model_version"], r1["fallback"]) == ("C1", "als", "3", False)
    assert served.set_index("recommendation_id").loc["r3", "fallback_reason"] == "unknown_customer"

    con = Lake(ws).connect()
    impact = recommendations.impact(con, served).set_index("model")
    als, popular = impact.loc["als"], impact.loc["popular"]
    assert (als["served"], als["impressions"], als["clicked"], als["converted"], als["revenue"]) == (2, 6, 2, 1, 30)
    assert als["ctr"] == 1.0 and als["conversion_per_click"] == 0.5 and als["revenue_per_served"] == 15
    assert (popular["served"], popular["clicked"], popular["converted"]) == (2, 0, 1) and popular["fallback"]
    assert popular["conversion_rate"] == 0.5 and pd.isna(popular["conversion_per_click"])

    positions = recommendations.by_position(con, served).set_index("position")
    assert positions["impressions"].tolist() == [4, 3, 2], "r1, r2 show 3 items, r3 2, r4 1"
    assert positions["clicks"].tolist() == [1, 1, 1], "I1 at 1 (r2), I2 at 2 (r1), I3 at 3 (r2)"
    assert positions["purchases"].tolist() == [1, 1, 0], "I9 at 1 (r4), I2 at 2 (r1)"
    html = recommendation_section(ws, con)
    assert "the service&#x27;s log (4 answers" in html
    assert "By position in the list" in html
    forgot = CliRunner().invoke(app, ["--workspace", str(ws.root), "forget", "C1"])
    assert forgot.exit_code == 0 and "served recommendations 3" in forgot.output, forgot.output
    assert served_log.read(ws)["recommendation_id"].tolist() == ["r4"]


@pytest.fixture(scope="module")
def server_ws(champions, tmp_path_factory) -> Workspace:
    """A copy of the read-only champions workspace (the server writes its log into it), without any log that
    other tests' batch runs left there."""
    ws = copy_workspace(champions, tmp_path_factory.mktemp("served_log") / "ws")
    shutil.rmtree(ws.served_log, ignore_errors=True)
    with ws.config_file.open("a") as fh:
        fh.write("\n[score]\nchunk_rows = 100\n")  # batch recommendations in several chunks
    return ws


def test_answers_to_a_forgotten_customer_are_never_written(ws):
    """Tombstones are checked when the queue is written, not when the answer was queued: an answer served just
    before `propel forget` and written just after must not bring the person back into the log."""
    from propel.lake import tombstones

    log = served_log.ServedLog(ws, forgotten=lambda: tombstones.keys(ws.tombstones))
    log.record(answer("r1", ["I1"], customer="C1"))
    log.record(answer("r2", ["I2"], customer="C2"))
    tombstones.add(ws.tombstones, [tombstones.customer_key("C1")])
    assert log.flush() == 1
    assert served_log.read(ws)["customer_id"].tolist() == ["C2"]


def test_the_service_logs_what_recommend_answered(server_ws, tmp_path):
    proc, url = start([BIN / "propel", "--workspace", server_ws.root, "serve", "--workers", "1"], tmp_path / "server.log")
    try:
        bodies = [httpx.post(f"{url}/recommend", json={"customer_id": c, "k": 4}, timeout=30).json()
                  for c in ("no-such-customer", "no-such-customer-2")]
        deadline = time.monotonic() + 30  # written by the worker's log thread within a second
        while (served_log.read(server_ws) is None or len(served_log.read(server_ws)) < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(proc)
    served = served_log.read(server_ws).set_index("recommendation_id")
    assert set(served.index) == {b["recommendation_id"] for b in bodies}
    for body in bodies:
        row = served.loc[body["recommendation_id"]]
        assert list(row["items"]) == [i["item_id"] for i in body["items"]] and len(row["items"]) == 4
        assert (row["customer_id"], row["model_version"]) == (body["customer_id"], str(body["model_version"]))
        assert row["fallback"] and row["fallback_reason"] == "unknown_customer" and row["source"] == "api"
    impact = recommendations.impact(Lake(server_ws).connect(), served.reset_index())
    assert impact["served"].sum() == 2 and impact["impressions"].sum() == 8 and impact["clicked"].sum() == 0


def test_batch_recommendations_carry_logged_ids(server_ws, tmp_path):
    out = tmp_path / "recs.parquet"
    result = CliRunner().invoke(app, ["--workspace", str(server_ws.root), "score", "recommender", "--k", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    recs = pd.read_parquet(out)
    assert recs.groupby("customer_id")["recommendation_id"].nunique().eq(1).all(), "one id per customer's list"
    assert recs["recommendation_id"].nunique() == recs["customer_id"].nunique() and recs["recommendation_id"].str.len().eq(32).all()
    served = served_log.read(server_ws)
    batch = served[served["source"] == "batch"].set_index("recommendation_id")
    assert set(batch.index) == set(recs["recommendation_id"]), "every exported list logged, across chunks"
    lists = recs.sort_values("rank").groupby("recommendation_id")["item_id"].agg(list)
    assert all(list(batch.loc[i, "items"]) == items for i, items in lists.items())
    assert (batch["customer_id"] == recs.drop_duplicates("recommendation_id").set_index("recommendation_id")
            .loc[batch.index, "customer_id"]).all()
    gone = recs["customer_id"].iloc[0]
    assert served_log.forget(server_ws, {gone}) == 1 and gone not in set(served_log.read(server_ws)["customer_id"])

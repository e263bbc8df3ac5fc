"""Events over HTTP are validated by file ingestion's own rules: same reason codes per event, same
coercions, and PII hashed to the same value ingest writes for the same row."""

from __future__ import annotations

import json
from datetime import timedelta

from propel.lake import intake
from propel.lake.ingest import hash_pii, ingest
from propel.lake.intake import validate
from tests.helpers import NOW, lake_frame, write

GOOD = {"event_id": "g", "ts": "2025-03-01T10:00:00Z", "customer_id": "C1", "channel": "web", "event_type": "page_view"}


def ev(**kw) -> dict:
    return {**GOOD, **kw}


def test_each_rule_rejects_only_its_event_with_field_and_reason(ws):
    bad = [
        (ev(event_id="b1", ts="yesterday"), "ts", "bad_timestamp:ts"),
        (ev(event_id="b2", event_type=" "), "event_type", "missing_value:event_type"),
        (ev(event_id="b3", channel="pigeon"), "channel", "not_allowed:channel"),
        (ev(event_id="b4", event_type="purchase", revenue=-5), "revenue", "negative_value:revenue"),
        (ev(event_id="b5", ts="2031-01-01T00:00:00Z"), "ts", "future_timestamp:ts"),
        ({k: v for k, v in ev(event_id="b6").items() if k != "customer_id"}, "customer_id", "missing_identity"),
        (ev(event_id="b7", customer_id="unknown"), "customer_id", "placeholder_value:customer_id"),
        (ev(event_id="b8", quantity="lots"), "quantity", "bad_float:quantity"),
    ]
    batch = []
    for i, (event, _, _) in enumerate(bad):
        batch += [ev(event_id=f"ok{i}"), event]
    results = validate(ws, batch, now=NOW)
    assert len(results) == len(batch)
    for i, (_, field, reason) in enumerate(bad):
        ok, rejected = results[2 * i], results[2 * i + 1]
        assert ok["status"] == "accepted" and ok["event"]["event_id"] == f"ok{i}", "order kept, good ones accepted"
        assert rejected == {"status": "rejected", "field": field, "reason": reason}


def test_a_missing_required_field_is_per_event_not_per_batch(ws):
    no_ts = {k: v for k, v in GOOD.items() if k != "ts"}
    assert validate(ws, [no_ts], now=NOW) == [{"status": "rejected", "field": "ts", "reason": "missing_value:ts"}]


def test_duplicate_event_id_in_a_batch_and_non_objects(ws):
    results = validate(ws, [ev(event_id="d"), "not an event", ev(event_id="d", channel="app"), [1], None,
                            ev(event_id="x", ts="bad"), ev(event_id="x")], now=NOW)
    assert [r["status"] for r in results] == ["accepted", "rejected", "duplicate", "rejected", "rejected",
                                              "rejected", "accepted"], "a rejected event does not claim its id"
    assert results[1] == {"status": "rejected", "field": "1", "reason": "not_an_object"}
    assert results[3]["field"] == "3" and results[4]["field"] == "4"


def test_coercions_as_ingest(ws):
    [r] = validate(ws, [ev(ts="20250301", quantity="", revenue="$1,234.50", consent="yes", event_type="PURCHASE")],
                   now=NOW)
    e = r["event"]
    assert e["ts"] == "2025-03-01T00:00:00+00:00", "YYYYMMDD"
    assert e["quantity"] is None and e["revenue"] == 1234.5, "blank number missing, currency read"
    assert e["event_type"] == "purchase"
    assert json.loads(e["extra"]) == {"consent": "yes"}, "unknown fields folded into extra"
    [r] = validate(ws, [ev(quantity="NA", revenue=True)], now=NOW)
    assert r["status"] == "rejected" and r["reason"] == "bad_float:revenue", "a JSON boolean is text 'true'"


def test_pii_hashed_as_file_ingestion_writes_it(ws, raw):
    write(raw, "events.csv", """
        event_id,ts,identity_type,identity_value,channel,event_type,note
        e1,2025-03-01T10:00:00Z,email,Alice.Planted@Example.com,web,page_view,call me at +1 555 000 5555 please
    """)
    ingest(raw, ws, now=NOW)
    lake = lake_frame(ws, "SELECT identity_type, identity_value, extra FROM events_all").iloc[0]
    [r] = validate(ws, [{"event_id": "e1", "ts": "2025-03-01T10:00:00Z", "identity_type": "email",
                         "identity_value": "Alice.Planted@Example.com", "channel": "web", "event_type": "page_view",
                         "note": "call me at +1 555 000 5555 please"}], now=NOW)
    e = r["event"]
    assert e["identity_type"] == lake["identity_type"] == "email"
    assert e["identity_value"] == lake["identity_value"] == hash_pii("email", "alice.planted@example.com", ws.salt())
    assert json.loads(e["extra"]) == json.loads(lake["extra"])
    assert "5555" not in e["extra"] and "Planted" not in json.dumps(r)


def test_identity_map_and_tombstones_reach_intake(ws, raw):
    """An event's identifier is looked up in the committed identity map (re-read after each load), and an
    event about a forgotten person is rejected, as ingest drops it."""
    write(raw, "events.csv", """
        event_id,ts,identity_type,identity_value,customer_id,channel,event_type
        f1,2025-03-01T09:00:00Z,device_id,d5,C5,app,login
    """)
    device = ev(event_id="m1", identity_type="device_id", identity_value="d5")
    del device["customer_id"]
    assert validate(ws, [device], now=NOW)[0]["mapped"] == (None, None), "nothing ingested yet"
    ingest(raw, ws, now=NOW)
    [r] = validate(ws, [device, ev(event_id="m2", customer_id="C5")], now=NOW)[:1]
    assert r["status"] == "accepted" and r["mapped"][0] == "C5"
    from propel.forget import forget

    forget(ws, ["C5"])
    assert validate(ws, [ev(event_id="m3", customer_id="C5"), device], now=NOW) == [
        {"status": "rejected", "field": "customer_id", "reason": "forgotten"}] * 2


def test_consecutive_batches_through_the_prepared_query_each_get_their_own_answer(ws):
    """The staging query is prepared once per set of columns and re-run per batch: nothing of one batch
    (its values, its size, its `now`) may stay bound into the next one's answer."""
    soon = (NOW + timedelta(days=200)).isoformat()
    first = validate(ws, [ev(event_id="a1", revenue="$5"), ev(event_id="a2", ts=soon)], now=NOW)
    second = validate(ws, [ev(event_id="b1", channel="pigeon"), ev(event_id="b2", ts=soon), ev(event_id="b3", revenue="7")],
                      now=NOW + timedelta(days=400))
    assert first[0]["event"]["event_id"] == "a1" and first[0]["event"]["revenue"] == 5.0
    assert first[1] == {"status": "rejected", "field": "ts", "reason": "future_timestamp:ts"}
    assert second[0] == {"status": "rejected", "field": "channel", "reason": "not_allowed:channel"}
    assert second[1]["status"] == "accepted" and second[1]["event"]["event_id"] == "b2", "not future at the later now"
    assert second[2]["event"]["event_id"] == "b3" and second[2]["event"]["revenue"] == 7.0
    assert validate(ws, [ev(event_id="a1", revenue="$5"), ev(event_id="a2", ts=soon)], now=NOW) == first
    assert len(intake._stager(ws).prepared) == 1, "the batches ran one prepared query"


def test_batches_with_other_fields_get_their_own_prepared_query(ws, monkeypatch):
    """Extra fields change the query (they fold into `extra`); past PREPARED_MAX queries the oldest is dropped
    and prepared again when needed, with the same answers."""
    monkeypatch.setattr(intake, "PREPARED_MAX", 1)
    plain = validate(ws, [ev(event_id="p")], now=NOW)
    noted = validate(ws, [ev(event_id="n", note="hi")], now=NOW)
    assert plain[0]["event"]["extra"] is None and json.loads(noted[0]["event"]["extra"]) == {"note": "hi"}
    assert validate(ws, [ev(event_id="p")], now=NOW) == plain
    assert validate(ws, [ev(event_id="n", note="hi")], now=NOW) == noted
    assert len(intake._stager(ws).prepared) == 1

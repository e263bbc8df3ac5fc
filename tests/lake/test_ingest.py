"""Ingestion: file-level errors, row-level quarantine reasons, reconciliation, idempotency, increments."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from propel.lake.ingest import IngestError, ingest
from propel.lake.tables import Lake
from tests.helpers import NOW, lake_frame, write

CUSTOMERS = """
customer_id,signup_at,marketing_consent,city_tier,Email
C1,2025-01-01T10:00:00+02:00,true,1,Alice@Example.com
C2,2025-01-02,false,2,bob@example.com
"""
EVENTS_HEADER = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,session_id"


def test_missing_required_column_names_file_and_column(ws, raw):
    write(raw, "customers.csv", "customer_id,created\nC1,2025-01-01")
    with pytest.raises(IngestError, match=r"customers\.csv: missing required column 'signup_at' for table 'customers'.*Fix"):
        ingest(raw, ws, now=NOW)
    assert not Lake(ws).files("customers"), "nothing may be written when a file is rejected"


def test_events_need_an_identifier_column(ws, raw):
    write(raw, "events.csv", "event_id,ts,channel,event_type\ne1,2025-01-01,web,page_view")
    with pytest.raises(IngestError, match=r"events\.csv: table 'events' needs either 'customer_id' or both"):
        ingest(raw, ws, now=NOW)


def test_unreadable_file_is_named(ws, raw):
    (raw / "items.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(IngestError, match=r"items\.parquet: cannot read as items"):
        ingest(raw, ws, now=NOW)


def test_ambiguous_columns_are_an_error(ws, raw):
    write(raw, "items.csv", "item_id,Item ID,category\nI1,I1,shoes")
    with pytest.raises(IngestError, match=r"items\.csv: columns 'item_id' and 'Item ID' both mean 'item_id'"):
        ingest(raw, ws, now=NOW)


def test_empty_raw_dir_is_an_error(ws, raw):
    with pytest.raises(IngestError, match="no raw files found"):
        ingest(raw, ws, now=NOW)


def test_row_level_reasons_and_reconciliation(ws, raw):
    write(raw, "events.csv", f"""
        {EVENTS_HEADER}
        e1,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e2,2025-03-01T10:00:00Z,cookie_id,K1,,web,purchase,I1,1,-5,s1
        e3,not-a-date,cookie_id,K1,,web,page_view,I1,,,s1
        e4,2099-01-01T00:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e5,2025-03-01T10:00:00Z,cookie_id,K1,,carrier_pigeon,page_view,I1,,,s1
        ,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e7,2025-03-01T10:00:00Z,,,,web,page_view,I1,,,s1
        e8,2025-03-01T10:00:00Z,cookie_id,unknown,,web,page_view,I1,,,s1
        e9,2025-03-01T10:00:00Z,cookie_id,K1,,web,purchase,I1,two,10,s1
        e1,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e1,2025-03-01T11:00:00Z,cookie_id,K1,,web,page_view,I1,,,s1
        e10,2025-03-01T10:00:00Z,,,C1,store,purchase,I1,1,10,
    """)
    report = ingest(raw, ws, now=NOW)
    ev = report.tables["events"]
    assert ev.reconciles() and ev.input == 12
    assert (ev.accepted, ev.quarantined, ev.duplicates) == (2, 8, 2)
    assert ev.reasons == {
        "negative_value:revenue": 1, "bad_timestamp:ts": 1, "future_timestamp:ts": 1, "not_allowed:channel": 1,
        "missing_value:event_id": 1, "missing_identity": 1, "placeholder_value:identity_value": 1,
        "bad_float:quantity": 1, "exact_duplicate": 1, "duplicate_key": 1,
    }
    q = lake_frame(ws, f"SELECT * FROM read_parquet('{ws.lake}/quarantine/*.parquet') ORDER BY row")
    assert q["row"].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert q.loc[q["row"] == 3, "reason"].item() == "bad_timestamp:ts"
    assert json.loads(q.loc[q["row"] == 3, "raw"].item())["ts"] == "not-a-date", "quarantine keeps the raw value"
    manifest = Lake(ws).manifests()[0]
    for counts in manifest["tables"].values():
        assert counts["input"] == counts["accepted"] + counts["quarantined"] + counts["duplicates"]
    assert manifest["files"][0]["sha256"] and manifest["timings_s"]


def test_timestamps_normalised_to_utc_and_columns_tolerant(ws, raw):
    write(raw, "customers.csv", """
        Customer ID , Signup At,Marketing Consent
        C1,2025-01-01T10:00:00+02:00,no
        C2,2025-01-01T10:00:00-05:00,
    """)
    ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT customer_id, signup_at, marketing_consent FROM customers ORDER BY 1")
    assert c["signup_at"].astype(str).tolist() == ["2025-01-01 08:00:00", "2025-01-01 15:00:00"]
    assert c["marketing_consent"].tolist()[0] is False


def test_crm_extras_flow_through_typed(ws, raw):
    write(raw, "customers.csv", """
        customer_id,signup_at,city_tier,ltv_estimate,is_vip,segment_code,notes
        C1,2025-01-01,1,10.5,true,A1,
        C2,2025-01-01,,7,false,B2,hello
    """)
    ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT * FROM customers ORDER BY customer_id")
    types = dict(lake_frame(ws, "DESCRIBE customers")[["column_name", "column_type"]].values)
    assert types["city_tier"] == "BIGINT" and types["ltv_estimate"] == "DOUBLE"
    assert types["is_vip"] == "BOOLEAN" and types["segment_code"] == "VARCHAR"
    assert c["notes"].tolist()[1] == "hello" and pd.isna(c["city_tier"].tolist()[1])


def test_unknown_event_columns_kept_in_extra(ws, raw):
    write(raw, "events.csv", f"{EVENTS_HEADER},Promo Code\ne1,2025-03-01,cookie_id,K1,,web,page_view,,,,s1,SPRING")
    ingest(raw, ws, now=NOW)
    extra = lake_frame(ws, "SELECT extra FROM events")["extra"].item()
    assert json.loads(extra) == {"promo_code": "SPRING"}


def test_bot_bursts_flagged_but_humans_kept(ws, raw):
    rows = [f"b{i},2025-03-02T10:00:00.{i:02d}Z,cookie_id,BOT,,web,page_view,I1,,,sb" for i in range(20)]
    rows += [f"h{i},2025-03-02T10:{i:02d}:00Z,cookie_id,HUMAN,,web,page_view,I1,,,sh" for i in range(20)]
    rows += [f"p{i},2025-03-02T11:00:00.{i:02d}Z,cookie_id,SHOPPER,,web,purchase,I1,1,1,sp" for i in range(10)]
    # a known customer's imported ratings log: many views stamped with the same second
    rows += [f"r{i},2025-03-02T12:00:00Z,customer_id,C7,,web,product_view,I{i},,,sr" for i in range(12)]
    write(raw, "events.csv", EVENTS_HEADER + "\n" + "\n".join(rows))
    report = ingest(raw, ws, now=NOW)
    assert report.tables["events"].reasons == {"bot_burst": 20}
    kept = lake_frame(ws, "SELECT coalesce(identity_value, customer_id) v, count(*) n FROM events GROUP BY 1 ORDER BY 1")
    assert kept.values.tolist() == [["C7", 12], ["HUMAN", 20], ["SHOPPER", 10]], \
        "purchases and a known customer's events are never bot-flagged"


def test_pii_is_hashed_everywhere(ws, raw):
    write(raw, "customers.csv", CUSTOMERS)
    write(raw, "events.csv", f"""
        {EVENTS_HEADER}
        e1,2025-03-01,email,ALICE@example.com ,,email,email_open,,,,
        e2,2099-03-01,phone,+44 7700 900123,,sms,sms_click,,,,
    """)
    write(raw, "identities.csv", """
        identity_type,identity_value,linked_type,linked_value,observed_at
        customer_id,C1,email,alice@example.com,2025-01-01
        phone,(07700) 900-123,customer_id,C2,2025-01-01
    """)
    ingest(raw, ws, now=NOW)
    blobs = b"".join(p.read_bytes() for p in ws.data.rglob("*") if p.is_file() and p.name != ".salt")
    for secret in (b"alice", b"ALICE", b"bob@", b"7700 900", b"7700900", b"900123"):  # 6+ digits: a hex hash holds 4 by chance
        assert secret not in blobs.lower() if secret.islower() else secret not in blobs
    # the same address, differently written, hashes to one identifier that links the events to C1
    ev = lake_frame(ws, "SELECT event_id, customer_id FROM events ORDER BY 1")
    assert ev.values.tolist() == [["e1", "C1"]]


def test_idempotent_and_incremental(ws, raw, tmp_path):
    write(raw, "customers.csv", CUSTOMERS)
    write(raw, "events_2025-03-01.csv", f"""
        {EVENTS_HEADER}
        e1,2025-03-01T10:00:00Z,,,C1,store,purchase,I1,1,10,
        e2,2025-03-01T11:00:00Z,,,C2,store,purchase,I1,1,12,
    """)
    first = ingest(raw, ws, now=NOW)
    snapshot = sorted((p.relative_to(ws.lake), p.read_bytes()) for p in ws.lake.rglob("*.parquet"))
    again = ingest(raw, ws, now=NOW)
    assert again.load_id is None and len(again.skipped_files) == 2
    assert sorted((p.relative_to(ws.lake), p.read_bytes()) for p in ws.lake.rglob("*.parquet")) == snapshot
    assert len(Lake(ws).manifests()) == 1

    write(raw, "events_2025-03-02.csv", f"""
        {EVENTS_HEADER}
        e2,2025-03-01T11:00:00Z,,,C2,store,purchase,I1,1,12,
        e3,2025-03-02T09:00:00Z,,,C1,store,purchase,I2,2,30,
    """)
    second = ingest(raw, ws, now=NOW)
    assert list(second.tables) == ["events"], "only the new file is read"
    assert second.tables["events"].reasons == {"already_in_lake": 1}
    ev = lake_frame(ws, "SELECT event_id, customer_id, CAST(ts AS DATE)::VARCHAR d FROM events ORDER BY 1")
    assert ev.values.tolist() == [["e1", "C1", "2025-03-01"], ["e2", "C2", "2025-03-01"], ["e3", "C1", "2025-03-02"]]
    parts = sorted(p.parent.name for p in Lake(ws).files("events"))
    assert parts == ["event_date=2025-03-01", "event_date=2025-03-02"]
    assert first.load_id == "L000001" and second.load_id == "L000002"


def test_latest_customer_record_wins(ws, raw):
    write(raw, "customers.csv", CUSTOMERS)
    ingest(raw, ws, now=NOW)
    write(raw, "customers_update.csv", "customer_id,signup_at,marketing_consent\nC2,2025-01-02,true")
    ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT customer_id, marketing_consent FROM customers ORDER BY 1")
    assert c.values.tolist() == [["C1", True], ["C2", True]]


def test_csv_and_parquet_give_the_same_lake(tmp_path, generated):
    from propel.config import Workspace

    pq_raw = tmp_path / "pq"
    pq_raw.mkdir()
    for src in generated.glob("*.csv"):
        pd.read_csv(src, dtype=str, keep_default_na=False).to_parquet(pq_raw / (src.stem + ".parquet"), index=False)
    lakes = []
    for name, src in (("csv", generated), ("pq", pq_raw)):
        w = Workspace.resolve(tmp_path / name)
        w.data.mkdir(parents=True)
        (w.data / ".salt").write_text("fixed-salt")
        ingest(src, w)
        lakes.append(w)
    for table, key in (("events", "event_id"), ("customers", "customer_id"), ("campaign_touches", "campaign_id, customer_id, sent_at")):
        a, b = (lake_frame(w, f"SELECT * EXCLUDE (_load) FROM {table} ORDER BY {key}") for w in lakes)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_missing_consent_means_not_given(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at,marketing_consent\nC1,2025-01-01,\nC2,2025-01-01,no")
    write(raw, "customers_b.csv", "customer_id,signup_at\nC3,2025-01-01")
    ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT customer_id, marketing_consent FROM customers ORDER BY 1")
    assert c["marketing_consent"].isna().tolist() == [True, False, True] and c.loc[1, "marketing_consent"] == False  # noqa: E712
    assert lake_frame(ws, "SELECT customer_id FROM contactable")["customer_id"].tolist() == []


def test_row_numbers_are_per_file_when_files_are_staged_in_parallel(ws, raw):
    # Many small row groups and two files read concurrently: each quarantined row must still name
    # its own file's data row, and a copy in a later file is the duplicate.
    n = 20_000
    bad = {4321, 15000}
    pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "ts": ["not-a-date" if i in bad else "2025-03-01T10:00:00Z" for i in range(n)],
        "identity_type": "cookie_id", "identity_value": [f"K{i}" for i in range(n)],
        "channel": "web", "event_type": "purchase",
    }).to_parquet(raw / "events_a.parquet", index=False, row_group_size=2048)
    write(raw, "events_b.csv", """
        event_id,ts,identity_type,identity_value,channel,event_type
        e7,2025-03-01T10:00:00Z,cookie_id,K7,web,purchase
        x1,yesterday,cookie_id,K1,web,purchase
    """)
    report = ingest(raw, ws, now=NOW)
    assert report.tables["events"].reasons == {"bad_timestamp:ts": 3, "exact_duplicate": 1}
    q = lake_frame(ws, f"SELECT file, row FROM read_parquet('{ws.lake}/quarantine/*.parquet') ORDER BY file, row")
    assert q.values.tolist() == [["events_a.parquet", 4322], ["events_a.parquet", 15001], ["events_b.csv", 2]]


def test_header_only_files_as_the_very_first_load(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at")
    write(raw, "events.csv", EVENTS_HEADER)
    report = ingest(raw, ws, now=NOW)
    assert report.load_id == "L000001" and report.tables["events"].input == report.tables["customers"].input == 0
    assert lake_frame(ws, "SELECT count(*) FROM events").iloc[0, 0] == 0
    write(raw, "customers_2.csv", "customer_id,signup_at\nC1,2025-01-01")
    assert ingest(raw, ws, now=NOW).load_id == "L000002"
    assert lake_frame(ws, "SELECT customer_id FROM customers")["customer_id"].tolist() == ["C1"]


def test_partial_crm_file_changes_only_its_columns_for_the_customers_it_names(ws, raw):
    write(raw, "customers.csv", """
        customer_id,signup_at,marketing_consent,zip,tier
        C1,2025-01-01,yes,00501,gold
        C2,2025-01-02,no,02134,silver
    """)
    ingest(raw, ws, now=NOW)
    write(raw, "customers_tier.csv", "customer_id,signup_at,tier\nC1,2025-01-01,platinum")
    ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT customer_id, marketing_consent, zip, tier FROM customers ORDER BY 1")
    assert c.values.tolist() == [["C1", True, "00501", "platinum"], ["C2", False, "02134", "silver"]]


def test_one_malformed_row_among_2000_is_quarantined_not_the_file(ws, raw):
    rows = [f"e{i},2025-03-01T10:00:00Z,cookie_id,K{i},web,page_view" for i in range(2000)]
    rows[1234] = "e1234,2025-03-01T10:00:00Z,cookie_id,K1234,web,page_view,surplus,fields"
    rows[1800] = "e1800,not-a-date,cookie_id,K1800,web,page_view"
    write(raw, "events.csv", "event_id,ts,identity_type,identity_value,channel,event_type\n" + "\n".join(rows))
    ev = ingest(raw, ws, now=NOW).tables["events"]
    assert (ev.input, ev.accepted, ev.reasons) == (2000, 1998, {"malformed_row": 1, "bad_timestamp:ts": 1})
    q = lake_frame(ws, f"SELECT row, reason, raw FROM read_parquet('{ws.lake}/quarantine/*.parquet') ORDER BY row")
    assert q[["row", "reason"]].values.tolist() == [[1235, "malformed_row"], [1801, "bad_timestamp:ts"]], \
        "rows after a malformed one keep their data-row number"
    assert json.loads(q.loc[0, "raw"])["fields"][:2] == ["e1234", "2025-03-01T10:00:00Z"]

"""PII by content, not only by name: emails and phone numbers planted under odd column names, identity
types and event extras never reach any file of the workspace's data folder in clear."""

from __future__ import annotations

import json

import duckdb

from propel.lake.ingest import hash_pii, ingest
from propel.lake.tables import Lake
from tests.helpers import NOW, lake_frame, write

PLANTED = ["alice.planted@example.com", "5550001111", "555 000 2222", "bob.planted@example.org", "+44 20 7946 0000",
           "carol.planted@example.net", "erin.planted@example.com", "555 000 4444", "frank.planted@example.com",
           "grace.planted@example.com", "+1 555 000 5555", "heidi.planted@example.com", "ivan.planted@example.com",
           "(555) 000-7777", "judy.planted@example.com"]


def test_planted_pii_never_reaches_the_data_folder(ws, raw):
    write(raw, "customers.csv", """
        customer_id,signup_at,contact_email,telephone,email_consent,note
        C1,2025-01-01,Alice.Planted@Example.com,5550001111,yes,call 555 000 2222 or bob.planted@example.org
        C2,2025-01-02,+44 20 7946 0000,carol.planted@example.net,no,plain
        C3,not-a-date,judy.planted@example.com,,no,x
    """)
    write(raw, "identities.csv", """
        identity_type,identity_value,linked_type,linked_value,observed_at
        e-mail,Erin.Planted@Example.com,customer_id,C1,2025-02-01
        phone_num,555 000 4444,customer_id,C2,2025-02-01
        fax_machine,frank.planted@example.com,customer_id,C2,2025-02-01
    """)
    write(raw, "events.csv", """
        event_id,ts,customer_id,channel,event_type,user_email,contact
        e1,2025-03-01T10:00:00Z,C1,web,page_view,grace.planted@example.com,+1 555 000 5555
        e2,(555) 000-7777,C1,pigeon,page_view,heidi.planted@example.com,x
        e3,2025-03-01,C1,web,page_view,ivan.planted@example.com,x,surplus field
    """)
    report = ingest(raw, ws, now=NOW)
    assert sum(c.quarantined for c in report.tables.values()) == 4, "the odd rows reach the quarantine..."
    files = [p for p in ws.data.rglob("*") if p.is_file() and p.name != ".salt"]
    # The bytes of every file, and the decoded rows of every Parquet file (compression could hide a value).
    con = duckdb.connect()
    blob = b"".join([p.read_bytes() for p in files] + [
        "".join(r[0] for r in con.execute(f"SELECT to_json(t)::VARCHAR FROM read_parquet('{p}') t").fetchall()).encode()
        for p in files if p.suffix == ".parquet"]).lower()
    for value in PLANTED:  # ...and no file holds a planted value, in any spelling
        digits = "".join(ch for ch in value if ch.isdigit())
        for spelling in {value.lower(), *([digits] if len(digits) >= 10 else [])}:
            assert spelling.encode() not in blob, f"{spelling!r} found in the data folder"
    # Partial spellings too; six digits, not four: a salted hex hash holds any four digits by chance.
    assert b"planted@" not in blob and b"20 7946" not in blob and b"207946" not in blob

    # Hashed the same way as a typed identifier, so it still links: `e-mail` is read as `email`.
    salt = ws.salt()
    ids = lake_frame(ws, "SELECT identity_type, identity_value FROM identities_all ORDER BY 1").values.tolist()
    assert ids == [["email", hash_pii("email", "erin.planted@example.com", salt)],
                   ["phone", hash_pii("phone", "555 000 4444", salt)]]
    c = lake_frame(ws, "SELECT * FROM customers_all ORDER BY customer_id")
    assert c["contact_email"].tolist() == [hash_pii("email", "alice.planted@example.com", salt),
                                           hash_pii("email", "+44 20 7946 0000", salt)], "by name: the column is an email"
    assert c["note"].tolist()[0] == (f"call {hash_pii('phone', '555 000 2222', salt)} or "
                                     f"{hash_pii('email', 'bob.planted@example.org', salt)}"), "PII inside a text"
    assert c["email_consent"].tolist() == [True, False], "a flag named after email is not PII"
    extra = json.loads(lake_frame(ws, "SELECT extra FROM events_all")["extra"].item())
    assert extra == {"user_email": hash_pii("email", "grace.planted@example.com", salt),
                     "contact": hash_pii("phone", "+1 555 000 5555", salt)}
    assert Lake(ws).files("quarantine")


def test_hashed_contact_columns_are_no_crm_attributes(ws, raw):
    """A hashed email or phone is an identifier, not an attribute: the feature build leaves it out."""
    from propel.features.build import profile_columns

    write(raw, "customers.csv", """
        customer_id,signup_at,contact_email,home_phone,city_tier
        C1,2025-01-01,a@example.com,+1 555 000 1111,1
    """)
    ingest(raw, ws, now=NOW)
    assert set(profile_columns(Lake(ws).connect())) == {"city_tier"}

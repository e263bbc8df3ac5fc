"""Identity resolution: safeguards, stable ids, recorded merges, and accuracy against ground truth."""

from __future__ import annotations

import pandas as pd

from propel.lake.ingest import hash_pii, ingest
from propel.lake.tables import Lake
from tests.helpers import NOW, lake_frame, write

LINKS = "identity_type,identity_value,linked_type,linked_value,observed_at"
EVENTS = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,session_id"


def owner(ws, t: str, v: str) -> str:
    return lake_frame(ws, f"SELECT customer_id FROM identity_map WHERE identity_type='{t}' AND identity_value='{v}'").iloc[0, 0]


def test_session_login_links_cookie_to_member(ws, raw):
    write(raw, "identities.csv", f"{LINKS}\ncustomer_id,C1,member_id,M1,2025-01-01")
    write(raw, "events.csv", f"""
        {EVENTS}
        e1,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,s1
        e2,2025-03-01T10:01:00Z,member_id,M1,,web,login,s1
        e3,2025-03-01T10:02:00Z,cookie_id,K2,,web,page_view,s2
    """)
    ingest(raw, ws, now=NOW)
    assert owner(ws, "cookie_id", "K1") == "C1"
    assert owner(ws, "cookie_id", "K2").startswith("anon-"), "an unlinked cookie is its own anonymous profile"


def test_shared_device_links_nobody(ws, raw):
    rows = [f"customer_id,C{i},device_id,KIOSK,2025-01-01" for i in range(40)]
    rows += ["customer_id,C0,device_id,D0,2025-01-01", "device_id,KIOSK,cookie_id,K9,2025-01-01"]
    write(raw, "identities.csv", LINKS + "\n" + "\n".join(rows))
    report = ingest(raw, ws, now=NOW)
    assert report.identity["n_shared"] == 1
    assert owner(ws, "device_id", "KIOSK").startswith("anon-")
    assert owner(ws, "device_id", "D0") == "C0"
    assert lake_frame(ws, "SELECT count(DISTINCT customer_id) FROM identity_map WHERE identity_value LIKE 'C%'").iloc[0, 0] == 40


def test_two_customers_never_merge_through_a_weak_link(ws, raw):
    write(raw, "identities.csv", f"""
        {LINKS}
        customer_id,C1,device_id,FAMILY,2025-01-01
        customer_id,C2,device_id,FAMILY,2025-01-02
        customer_id,C2,member_id,M2,2025-01-02
    """)
    report = ingest(raw, ws, now=NOW)
    assert owner(ws, "customer_id", "C1") == "C1" and owner(ws, "customer_id", "C2") == "C2"
    assert owner(ws, "device_id", "FAMILY") in ("C1", "C2")
    assert report.identity["refused"] == 1 and report.identity["merges"] == 0


def test_proven_merge_is_recorded_and_ids_stay_stable(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at,tier\nC1,2025-01-01,gold\nC2,2025-01-02,silver")
    write(raw, "events.csv", f"""
        {EVENTS}
        e1,2025-03-01T10:00:00Z,cookie_id,K1,,web,page_view,s1
        e2,2025-03-01T10:00:00Z,,,C2,store,purchase,
    """)
    ingest(raw, ws, now=NOW)
    anon = owner(ws, "cookie_id", "K1")
    assert anon.startswith("anon-")
    # A re-run with one more cookie in K1's session keeps K1's anonymous id.
    write(raw, "events_2.csv", f"{EVENTS}\ne3,2025-03-02T10:00:00Z,cookie_id,K0,,web,page_view,s1")
    ingest(raw, ws, now=NOW)
    assert owner(ws, "cookie_id", "K1") == anon and owner(ws, "cookie_id", "K0") == anon

    # The business says C1 and C2 are one person, and K1 logs in as C2: both merges are recorded.
    write(raw, "identities.csv", f"{LINKS}\ncustomer_id,C2,customer_id,C1,2025-04-01\ncookie_id,K1,customer_id,C2,2025-04-01")
    report = ingest(raw, ws, now=NOW)
    assert owner(ws, "cookie_id", "K1") == "C1" and owner(ws, "customer_id", "C2") == "C1"
    merges = pd.read_parquet(Lake(ws).files("identity_merges")[0])
    assert sorted(map(tuple, merges[["merged_id", "into_id"]].values)) == sorted([(anon, "C1"), ("C2", "C1")])
    assert report.identity["merges"] == 2
    people = lake_frame(ws, "SELECT customer_id, tier FROM customers")
    assert people.values.tolist() == [["C1", "gold"]], "the surviving id keeps its own record"
    assert lake_frame(ws, "SELECT DISTINCT customer_id FROM events").values.tolist() == [["C1"]]


def _pairs(groups: pd.Series) -> set[tuple[str, str]]:
    """All unordered pairs of identifiers that share a group."""
    out: set[tuple[str, str]] = set()
    for members in groups.groupby(groups).groups.values():
        keys = sorted(members)
        out.update((a, b) for i, a in enumerate(keys) for b in keys[i + 1:])
    return out


def test_resolution_precision_and_recall_against_ground_truth(tmp_path, generated):
    from propel.config import Workspace

    w = Workspace.resolve(tmp_path / "ws")
    ingest(generated, w)
    salt = w.salt()
    truth = pd.read_parquet(generated / "_truth" / "identities.parquet")
    truth["value"] = [hash_pii(t, v, salt) if t in ("phone", "email") else v
                      for t, v in zip(truth["identity_type"], truth["identity_value"])]
    truth["key"] = truth["identity_type"] + ":" + truth["value"]
    resolved = lake_frame(w, "SELECT identity_type || ':' || identity_value AS key, customer_id FROM identity_map")
    both = truth.merge(resolved, on="key")
    assert len(both) >= 0.95 * len(truth), "almost every true identifier must be in the map"
    predicted = _pairs(both.set_index("key")["customer_id"])
    linkable = both[both["linkable"]]
    actual_all = _pairs(both.set_index("key")["person_id"])
    actual_linkable = _pairs(linkable.set_index("key")["person_id"])
    precision = len(predicted & actual_all) / len(predicted)
    recall = len(predicted & actual_linkable) / len(actual_linkable)
    assert precision >= 0.99, precision
    assert recall >= 0.99, recall


def test_load_without_identifiers_gives_an_empty_map(ws, raw):
    write(raw, "items.csv", "item_id,category\nI1,shoes")
    report = ingest(raw, ws, now=NOW)
    assert report.identity["identifiers"] == 0 and report.identity["customers"] == 0
    assert lake_frame(ws, "SELECT count(*) FROM identity_map").iloc[0, 0] == 0

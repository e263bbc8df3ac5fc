"""The synthetic retailer: deterministic, on contract, and its truth files agree with its raw files."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from propel.demo.generate import DirtyRates, generate
from propel.lake.schema import BLOCKED_VALUE_PATTERN, CHANNELS, TABLES, table_for_file

END = date(2026, 10, 31)
SMALL = dict(customers=1500, days=90, end=END)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dirty")
    generate(out, seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    generate(out, seed=3, dirty=DirtyRates.none(), **SMALL)
    return out


def _raw(out: Path, table: str) -> pd.DataFrame:
    files = sorted(f for f in out.iterdir() if f.is_file() and table_for_file(f.name) == table)
    return pd.concat([pd.read_csv(f, dtype=str) for f in files], ignore_index=True)


def _truth(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / "_truth" / f"{name}.parquet")


def _with_person(out: Path, events: pd.DataFrame) -> pd.DataFrame:
    """Attach the true person to each event, by identifier or by customer_id."""
    ids = _truth(out, "identities")[["identity_type", "identity_value", "person_id"]]
    persons = _truth(out, "persons")[["customer_id", "person_id"]].dropna()
    by_id = events.merge(ids, on=["identity_type", "identity_value"], how="left")["person_id"]
    by_customer = events.merge(persons, on="customer_id", how="left")["person_id"]
    return events.assign(person_id=by_id.fillna(by_customer).to_numpy(),
                         ts=pd.to_datetime(events["ts"], format="ISO8601", utc=True, errors="coerce"))


def _defects(out: Path) -> dict[str, int]:
    """Count every kind of defect straight from the raw files."""
    ev = _raw(out, "events")
    ids = _raw(out, "identities")
    truth_ids = _truth(out, "identities")
    bots = truth_ids.loc[truth_ids.person_id.isna() & (truth_ids.identity_type == "cookie_id"), "identity_value"]
    ts = pd.to_datetime(ev["ts"], format="ISO8601", utc=True, errors="coerce")
    blocked = ids[["identity_value", "linked_value"]].fillna("").apply(lambda c: c.str.match(BLOCKED_VALUE_PATTERN))
    devices = ids[ids.linked_type == "device_id"].groupby("linked_value").identity_value.nunique()
    return {
        "exact_duplicate_rows": int(ev.duplicated().sum()),
        "duplicate_event_ids": int(ev.drop_duplicates().event_id.dropna().duplicated().sum()),
        "bot_events": int(ev.identity_value.isin(bots).sum()),
        "future_timestamps": int((ts >= pd.Timestamp(END + timedelta(days=1), tz="UTC")).sum()),
        "bad_timestamps": int((ev.ts == "not-a-date").sum()),
        "negative_revenue": int((ev.revenue.astype(float) < 0).sum()),
        "empty_event_id": int(ev.event_id.isna().sum()),
        "unknown_channel": int((~ev.channel.isin(CHANNELS)).sum()),
        "blocked_identity_values": int(blocked.any(axis=1).sum()),
        "hub_devices": int((devices > 50).sum()),
    }


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    args = dict(customers=300, days=40, end=END)
    a, b, c = (generate(tmp_path / name, seed=seed, **args).out_dir for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "events_part-00000.csv").read_bytes() != (c / "events_part-00000.csv").read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_columns_follow_the_contract(tmp_path, fmt):
    report = generate(tmp_path, customers=300, days=40, fmt=fmt, end=END)
    assert report.counts["events"] > 0 and "events" in report.summary()
    names = {f.name for f in tmp_path.iterdir() if f.is_file()}
    assert {table_for_file(n) for n in names} == {"customers", "identities", "items", "campaigns",
                                                   "campaign_touches", "events"}
    for name in names:
        table = TABLES[table_for_file(name)]
        path = tmp_path / name
        columns = list(pd.read_parquet(path).columns if fmt == "parquet" else pd.read_csv(path, nrows=1).columns)
        assert set(table.required) <= set(columns), name
        assert table.passthrough or set(columns) <= {c.name for c in table.columns}, name


def test_dirty_json_matches_the_raw_files(dirty):
    recorded = json.loads((dirty / "_truth" / "dirty.json").read_text())
    assert all(recorded[k] > 0 for k in recorded), recorded
    assert _defects(dirty) == {k: recorded[k] for k in _defects(dirty)}
    for name in ("persons", "identities", "treatment_effects"):
        assert len(_truth(dirty, name)) > 0
    assert set(json.loads((dirty / "_truth" / "channel_effects.json").read_text())) == {"email", "sms", "push", "social"}


def test_clean_data_has_no_defects(clean):
    assert set(json.loads((clean / "_truth" / "dirty.json").read_text()).values()) == {0}
    assert set(_defects(clean).values()) == {0}


def test_timestamps_carry_mixed_offsets_and_files_are_unsorted(dirty):
    ev = _raw(dirty, "events")
    assert ev.ts.str.endswith("Z").any() and ev.ts.str.contains(r"[+-]\d\d:\d\d$").any()
    assert not ev.ts.is_monotonic_increasing
    assert _raw(dirty, "customers").signup_at.str.contains(r"\+0[12]:00$").any()


def test_churned_persons_are_silent_after_churn(clean):
    ev = _with_person(clean, _raw(clean, "events"))
    assert ev.person_id.notna().all()
    persons = _truth(clean, "persons")
    ev = ev.merge(persons[["person_id", "churn_at", "first_seen_at"]], on="person_id")
    assert persons.churn_at.notna().any()
    assert not (ev.ts >= ev.churn_at).any()
    assert not (ev.ts < ev.first_seen_at).any()


def test_control_group_never_gets_campaign_events(clean):
    touches = _raw(clean, "campaign_touches")
    tagged = _with_person(clean, _raw(clean, "events").dropna(subset=["campaign_id"]))
    persons = _truth(clean, "persons")[["customer_id", "person_id"]]
    tagged = tagged.merge(persons, on="person_id", suffixes=("_event", ""))
    pairs = tagged.merge(touches, on=["campaign_id", "customer_id"])
    assert len(pairs) == len(tagged) > 0  # every tagged event answers a touch ...
    assert (pairs.group == "treatment").all()  # ... and never a held-out one
    assert set(tagged.event_type) >= {"purchase", "email_open"}


def test_linkable_means_a_login_shares_the_session(clean):
    ev = _raw(clean, "events")
    logged_in = set(ev.loc[ev.event_type == "login", "session_id"])
    seen = ev[ev.identity_type.isin(["cookie_id", "device_id"])]
    linked = seen.session_id.isin(logged_in).groupby([seen.identity_type, seen.identity_value]).any()
    truth = _truth(clean, "identities").set_index(["identity_type", "identity_value"]).linkable
    assert (truth.reindex(linked.index) == linked).all()
    assert 0.5 < linked.mean() < 0.95


def test_uplift_types_respond_as_named(clean):
    effects = _truth(clean, "treatment_effects").merge(_truth(clean, "persons")[["customer_id", "uplift_type"]])
    lift = (effects.p_treated - effects.p_control).groupby(effects.uplift_type).mean()
    assert lift["persuadable"] > 0.05 and lift["sleeping_dog"] < 0 and abs(lift["sure_thing"]) < 1e-9
    assert effects.group.eq("control").mean() == pytest.approx(0.2, abs=0.05)


def test_hub_devices_link_many_members_and_are_not_linkable(dirty):
    ids = _raw(dirty, "identities")
    per_device = ids[ids.linked_type == "device_id"].groupby("linked_value").identity_value.nunique()
    hubs = per_device[per_device > 50].index
    truth = _truth(dirty, "identities")
    assert len(hubs) >= 1
    assert not truth[truth.identity_value.isin(hubs)].linkable.any()


def test_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, customers=10, fmt="xlsx")


def test_end_is_the_last_day(clean):
    ts = pd.to_datetime(_raw(clean, "events").ts, format="ISO8601", utc=True)
    last = pd.Timestamp(END, tz="UTC")
    assert last < ts.max() < last + pd.Timedelta(days=1)
    assert ts.is_monotonic_increasing  # clean files are in time order

"""`propel stream flush`: logged events reach the lake exactly once, as the same rows a file load writes (PII hashed
once, extras kept, people resolved), deduplicated with file-ingested events, with reconciling counts, after a
`kill -9` mid-flush, with two flushes at once, and from a Redis Streams log."""

from __future__ import annotations

import json
import os
import subprocess

from propel.config import Workspace
from propel.lake import events_log, intake
from propel.lake.flush import flush
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from tests.helpers import BIN, NOW, lake_frame, write

CSV = """
    event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,utm_source
    e1,2025-03-01T10:00:00Z,email,Ann@Example.com,,web,page_view,I1,,,mail
    e2,20250302,device_id,d1,,app,add_to_cart,I2,1,,
    e3,2025-03-02T11:00:00Z,device_id,d1,C1,app,login,,,,
    e4,2025-03-03T12:00:00Z,,,C1,store,purchase,I2,2,$1234.50,
    e5,2025-03-04T12:00:00Z,phone,+1 (415) 555-0100,,sms,sms_click,,,,sms
"""
COLUMNS = CSV.strip().splitlines()[0].strip().split(",")


def _events(csv: str = CSV) -> list[dict]:
    """The CSV's rows as JSON events (blank cells left out), as an app would POST them."""
    return [{k: v for k, v in zip(COLUMNS, line.strip().split(",")) if v} for line in csv.strip().splitlines()[1:]]


def _post(ws: Workspace, events: list[dict]) -> dict:
    """What POST /events does: validate, then append the accepted events to the log."""
    checked = [r for r in intake.validate(ws, events, now=NOW) if r["status"] == "accepted"]
    log = events_log.open_log(ws)
    try:
        return log.append([r["event"] for r in checked], [r["mapped"] for r in checked])
    finally:
        log.close()


def _lake_events(ws: Workspace):
    return lake_frame(ws, "SELECT * EXCLUDE (_load) FROM events_all ORDER BY event_id")


def _cli(ws: Workspace, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "propel"), "--workspace", str(ws.root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_the_lake_holds_the_same_rows_whether_events_came_over_http_or_in_a_file(tmp_path, raw):
    write(raw, "events.csv", CSV)
    by_file, by_http = Workspace.resolve(tmp_path / "file"), Workspace.resolve(tmp_path / "http")
    for w in (by_file, by_http):
        w.root.mkdir(parents=True)
        (w.data / ".salt").parent.mkdir(parents=True, exist_ok=True)
        (w.data / ".salt").write_text("same-salt")
    ingest(raw, by_file, now=NOW)
    assert len(_post(by_http, _events())) == 5
    report = flush(by_http, now=NOW)
    assert report.tables["events"].accepted == 5 and report.tables["events"].reconciles()
    http, file = _lake_events(by_http), _lake_events(by_file)
    assert "Ann@Example.com" not in http.to_string() and "555" not in http.to_string(), "PII hashed once, at the door"
    assert http.drop(columns=["extra"]).equals(file.drop(columns=["extra"]))
    assert [json.loads(v) for v in http["extra"]] == [json.loads(v) for v in file["extra"]], "extras kept"
    maps = [lake_frame(w, "SELECT * FROM identity_map ORDER BY ALL") for w in (by_http, by_file)]
    assert maps[0].equals(maps[1]), "people resolved alike"


def test_each_event_once_with_file_loads_and_reruns(ws, raw):
    events = _events()
    write(raw, "events.csv", CSV.split("\n    e3")[0])  # e1, e2 from a file
    ingest(raw, ws, now=NOW)
    _post(ws, events[1:4])  # e2 (already in the lake), e3, e4
    report = flush(ws, now=NOW)
    counts = report.tables["events"]
    assert (counts.input, counts.accepted, counts.duplicates) == (3, 2, 1) and counts.reasons == {"already_in_lake": 1}
    assert flush(ws, now=NOW).load_id is None, "a re-run finds nothing new"
    _post(ws, events[3:])  # e4 again (a resend: not logged twice), e5
    assert flush(ws, now=NOW).tables["events"].input == 1
    assert _lake_events(ws)["event_id"].tolist() == ["e1", "e2", "e3", "e4", "e5"]
    stream = [m["stream"] for m in Lake(ws).manifests() if "stream" in m]
    assert [(s["from"], s["to"], s["events"]) for s in stream] == [(None, 3, 3), (3, 4, 1)]


def test_bot_bursts_are_quarantined_and_counts_reconcile(ws):
    burst = [{"event_id": f"b{i}", "ts": f"2025-03-01T10:00:00.{i:02d}0Z", "identity_type": "cookie_id",
              "identity_value": "k1", "channel": "web", "event_type": "page_view"} for i in range(40)]
    _post(ws, burst)
    counts = flush(ws, now=NOW).tables["events"]
    assert counts.input == 40 and counts.quarantined == 40 and counts.reasons == {"bot_burst": 40}
    assert counts.reconciles()
    q = lake_frame(ws, f"SELECT file, reason FROM read_parquet('{ws.lake}/quarantine/*.parquet')")
    assert len(q) == 40 and set(q["file"]) == {"stream"} and set(q["reason"]) == {"bot_burst"}


def test_kill_9_mid_flush_then_rerun_and_two_flushes_at_once(ws):
    _post(ws, _events())
    for point in ("flush:after_events", "flush:before_commit"):
        proc = _cli(ws, "stream", "flush", env={"PROPEL_CRASH_AT": point})
        proc.communicate(timeout=120)
        assert proc.returncode == -9, point
        assert not Lake(ws).files("events"), f"{point}: nothing of the killed flush is visible"
    a, b = _cli(ws, "stream", "flush"), _cli(ws, "stream", "flush")
    outs = [p.communicate(timeout=120) for p in (a, b)]
    assert sorted([a.returncode, b.returncode])[0] == 0, outs
    for proc, (out, err) in zip((a, b), outs):
        assert proc.returncode == 0 or "Traceback" not in err + out, "a busy lake is a message, not a crash"
    assert _lake_events(ws)["event_id"].tolist() == ["e1", "e2", "e3", "e4", "e5"], "exactly once"
    assert len([m for m in Lake(ws).manifests() if "stream" in m]) == 1


def test_a_recreated_log_is_read_from_its_start(ws):
    _post(ws, _events()[:2])
    flush(ws, now=NOW)
    (ws.stream / "events.db").unlink()
    _post(ws, _events()[2:])  # a new log: its offsets start again at 1
    assert flush(ws, now=NOW).tables["events"].accepted == 3


def test_flush_from_redis_streams(tmp_path, empty_redis):
    ws = Workspace.resolve(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_file.write_text(f'[stream]\nbackend = "redis"\nredis_url = "{empty_redis}"\n')
    events = _events()
    _post(ws, events[:3])
    assert flush(ws, now=NOW).tables["events"].accepted == 3
    _post(ws, events[2:])
    assert flush(ws, now=NOW).tables["events"].accepted == 2
    assert flush(ws, now=NOW).load_id is None
    assert len(_lake_events(ws)) == 5

"""`propel monitor --live` over a generated stream in the event log (through the intake rules, as POST /events
writes it; SQLite and a real Redis): steady -> no alert, web conversion halved in the last hour -> a web
conversion alert, the app feed lost -> an app volume alert, too little data -> a message, not an alert."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from propel.analytics import live_monitor
from propel.cli import app
from propel.config import Workspace
from propel.lake import events_log, intake

T0 = pd.Timestamp("2026-12-01T08:37Z")  # the stream's start, not on the hour: windows run to the minute
STEADY, DROP, LOST = T0 + pd.Timedelta(hours=26), T0 + pd.Timedelta(hours=27), T0 + pd.Timedelta(hours=28)
RATES = {"web": (600, 0.10), "app": (200, 0.06)}  # sessions per hour, conversion


def _stream(seed: int = 7) -> list[dict]:
    """Sessions (Poisson per hour) of 1-3 product views and a purchase with the channel's rate; web converts
    half as often in the hour before DROP; app sends nothing in the hour before LOST."""
    rng = np.random.default_rng(seed)
    events = []
    for channel, (per_hour, rate) in RATES.items():
        for hour in range(28):
            start = T0 + pd.Timedelta(hours=hour)
            if channel == "app" and start == LOST - pd.Timedelta(hours=1):
                continue
            p = rate / 2 if channel == "web" and start == DROP - pd.Timedelta(hours=1) else rate
            for s in range(rng.poisson(per_hour)):
                sid, at = f"{channel}-{hour}-{s}", start + pd.Timedelta(seconds=float(rng.uniform(0, 3600)))
                steps = [("product_view", 30.0 * i) for i in range(1 + rng.poisson(0.8))]
                steps += [("purchase", float(rng.uniform(120, 600)))] if rng.random() < p else []
                events += [{"event_id": f"{sid}-{i}", "ts": (at + pd.Timedelta(seconds=after)).isoformat(),
                            "customer_id": f"C{s % 3000}", "channel": channel, "event_type": kind, "item_id": "I1",
                            "session_id": sid} for i, (kind, after) in enumerate(steps)]
    return events


def _log(ws: Workspace, events: list[dict]) -> None:
    """As POST /events does: the intake rules, then the event log."""
    log = events_log.open_log(ws)
    try:
        for i in range(0, len(events), 5000):
            checked = intake.validate(ws, events[i:i + 5000], now=LOST.to_pydatetime())
            accepted = [r for r in checked if r["status"] == "accepted"]
            assert len(accepted) == len(checked), [r for r in checked if r["status"] != "accepted"][:3]
            log.append([r["event"] for r in accepted], [r["mapped"] for r in accepted])
    finally:
        log.close()


def _workspace(path, backend: str, url: str = "") -> Workspace:
    ws = Workspace.resolve(path / "ws")
    ws.root.mkdir(parents=True)
    ws.config_file.write_text(f'[stream]\nbackend = "{backend}"\n' + (f'redis_url = "{url}"\n' if url else ""))
    return ws


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stream(request, tmp_path_factory) -> Workspace:
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        host, port = url.split(":")
        redis.Redis(host=host, port=int(port)).flushdb()  # the session's server: start from an empty stream
    ws = _workspace(tmp_path_factory.mktemp(request.param), request.param, url)
    _log(ws, _stream())
    return ws


def _kinds(result: dict) -> set[tuple[str, str]]:
    return {(a["kind"], a["subject"]) for a in result["alerts"]}


def test_a_steady_stream_raises_no_alert(stream):
    result = live_monitor.check(stream, STEADY)
    assert result["alerts"] == [] and result["baseline"] == "the same hour on 1 earlier day(s)"
    checked = {c["channel"]: c for c in result["hourly_checks"]}
    assert set(checked) == {"web", "app", "(all)"} and checked["web"]["sessions"] > 400
    young = live_monitor.check(stream, T0 + pd.Timedelta(hours=5))  # less than a day, its first hour not whole
    assert young["alerts"] == [] and young["baseline"] == "the 3 hour(s) before it (the log covers less than a day)"


def test_halved_conversion_is_flagged_within_the_hour(stream):
    result = live_monitor.check(stream, DROP)
    assert _kinds(result) == {("conversion", "web")}, result["alerts"]
    assert result["alerts"][0]["hour"] == "2026-12-02 10:37..11:37 UTC"
    out = CliRunner().invoke(app, ["--workspace", str(stream.root), "monitor", "--live", "--now", "2026-12-02T11:37"])
    assert out.exit_code == 1, out.output
    assert "alert" in out.output and "web: conversion" in out.output
    saved = json.loads((stream.reports / "monitor_live.json").read_text())
    assert saved["alerts"] == json.loads(json.dumps(result["alerts"]))


def test_a_lost_feed_is_a_volume_alert(stream):
    assert _kinds(live_monitor.check(stream, LOST)) == {("volume", "app")}


def test_too_little_data_is_a_message_not_an_alert(tmp_path):
    ws = _workspace(tmp_path, "sqlite")
    assert "the event log holds 0.0 hours" in live_monitor.check(ws, STEADY)["skipped"]
    _log(ws, [e for e in _stream() if pd.Timestamp(e["ts"]) < T0 + pd.Timedelta(minutes=90)])
    result = live_monitor.check(ws, T0 + pd.Timedelta(minutes=90))
    assert result["alerts"] == [] and result["skipped"].startswith("too little data: the event log holds 1.5 hours")
    out = CliRunner().invoke(app, ["--workspace", str(ws.root), "monitor", "--live", "--now", "2026-12-01T10:07"])
    assert out.exit_code == 0, out.output
    assert "too little data" in out.output and "0 alert(s)" in out.output

"""Monitoring: PSI, a broken channel injected into generated data raises the alerts, clean data raises none."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.analytics import monitor
from propel.lake.ingest import ingest
from propel.cli import app
from propel.config import Workspace

END = datetime(2026, 11, 1, 6, tzinfo=timezone.utc)  # a few hours after the generated data's last day


def test_psi():
    rng = np.random.default_rng(0)
    base = pd.Series(rng.normal(0, 1, 20_000))
    assert monitor.psi(base, pd.Series(rng.normal(0, 1, 20_000))) < 0.01
    assert 0.1 < monitor.psi(base, pd.Series(rng.normal(0.4, 1, 20_000))) < 0.25, "a 0.4 sd shift is a moderate shift"
    assert monitor.psi(base, pd.Series(rng.normal(1, 1, 20_000))) > 0.25
    cats = pd.Series(["a"] * 500 + ["b"] * 500)
    assert monitor.psi(cats, pd.Series(["a"] * 900 + ["b"] * 100)) > 0.25
    assert monitor.psi(cats, pd.Series(["a"] * 500 + [None] * 500)) > 0.25, "missing values are a bin of their own"


@pytest.fixture(scope="module")
def broken(generated, tmp_path_factory) -> Workspace:
    """The generated shop with web checkout broken (no web purchases) and the app feed lost for the last 3 days."""
    raw = tmp_path_factory.mktemp("broken") / "raw"
    shutil.copytree(generated, raw)
    for path in raw.glob("events_part-*.csv"):
        events = pd.read_csv(path, dtype=str)
        ts = pd.to_datetime(events["ts"], utc=True, errors="coerce", format="ISO8601")
        last_days = ts >= pd.Timestamp("2026-10-29", tz="UTC")
        broken_rows = last_days & (((events["channel"] == "web") & (events["event_type"] == "purchase"))
                                   | (events["channel"] == "app"))
        events[~broken_rows].to_csv(path, index=False)
    ws = Workspace.resolve(raw.parent / "ws")
    ingest(raw, ws)
    return ws


def test_broken_channels_raise_alerts_and_the_command_fails(broken):
    result = monitor.check(broken, now=END)
    kinds = {(a["kind"], a["subject"]) for a in result["alerts"]}
    assert ("conversion", "web") in kinds, result["alerts"]
    assert ("volume", "app") in kinds and ("freshness", "app") in kinds
    assert ("conversion", "store") not in kinds and ("volume", "web") not in kinds, "only what broke"
    assert "skipped" in result["drift"], "no champion here: drift is skipped, not an error"
    out = CliRunner().invoke(app, ["--workspace", str(broken.root), "monitor", "--now", "2026-11-01T06:00"])
    assert out.exit_code == 1, out.output
    assert "alert" in out.output and "web" in out.output
    saved = json.loads((broken.reports / "monitor.json").read_text())
    assert len(saved["alerts"]) == len(result["alerts"]) and saved["daily_checks"]


def test_stale_data_is_an_alert(broken):
    alerts = monitor.check(broken, now=datetime(2026, 11, 20, tzinfo=timezone.utc))["alerts"]
    assert any(a["kind"] == "freshness" and a["subject"] == "events" for a in alerts)


def test_clean_data_raises_no_data_alerts_and_measures_drift(champions):
    result = monitor.check(champions, now=END)
    data_alerts = [a for a in result["alerts"] if a["kind"] != "drift"]
    assert data_alerts == [], data_alerts
    drift = result["drift"]
    assert drift["model"] == "churn v1" and drift["reference_rows"] > 0 and drift["current_rows"] > 0
    assert 0 <= drift["score_psi"] < 0.25, "same generator, same population: the score is stable"
    features = {f["feature"]: f for f in drift["features"]}
    assert "days_since_last_purchase" in features and sum(f["top"] for f in features.values()) == 10
    assert result["freshness"]["online_store"]["lag_days"] < 1, "the champions workspace was just materialized"

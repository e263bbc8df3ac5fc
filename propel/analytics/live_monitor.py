"""`propel monitor --live`: the daily monitor's drop test (`monitor.compare`) at hourly grain over the event log
that POST /events writes, so a broken checkout or a lost feed is flagged within the hour it happens.

- The checked hour is the 60 minutes before now (to the minute, not the clock hour), so a check run every few
  minutes sees a drop that began at 10:20 before 11:20, not only after the clock hour 11:00-12:00 ends.
- Its baseline is the same hour on up to `live_baseline_days` earlier days (traffic has a daily rhythm: 3 a.m.
  is not a drop from 3 p.m.); while the log covers less than a day, the up to `live_baseline_hours` hours before.
- Conversion of an hour is its active sessions (a session's channel: its first event's in that hour) that have a
  purchase in it. Counting a session in the hour it began, as the daily monitor does, would leave the newest
  hour's last sessions no time to buy, and every check would see a drop.
- Conversion alerts at `live_conversion_drop`; volume, alpha, min_baseline and regular_share as the daily check.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from propel.analytics import monitor
from propel.config import Workspace
from propel.lake.events_log import open_log

HOUR = pd.Timedelta(hours=1)
PAGE = 10_000


def _events(log, since: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame | None, pd.Timestamp | None]:
    """The logged events with `since` <= ts < `end` (ts, channel, event_type, session_id), and the oldest ts
    logged. The log is in arrival order, not event time, so all of it is read."""
    frames, oldest, after = [], None, log.start
    while batch := log.read(after, PAGE):
        after = batch[-1][0]
        page = pd.DataFrame([e for _, e in batch], columns=["ts", "channel", "event_type", "session_id"])
        page["ts"] = pd.to_datetime(page["ts"], utc=True, format="ISO8601")
        oldest = page["ts"].min() if oldest is None else min(oldest, page["ts"].min())
        frames.append(page[(page["ts"] >= since) & (page["ts"] < end)])
    return (pd.concat(frames, ignore_index=True) if frames else None), oldest


def hourly(events: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Per hour before `end` (0: the last 60 minutes, 1: the hour before...) and channel: events, sessions, converted."""
    events = events.assign(hour=np.ceil((end - events["ts"]) / HOUR).astype(int) - 1)
    counts = events.groupby(["hour", "channel"]).size().rename("events")
    sessions = (events.dropna(subset=["session_id"]).sort_values("ts")
                .assign(bought=lambda d: d["event_type"] == "purchase")
                .groupby(["hour", "session_id"]).agg(channel=("channel", "first"), bought=("bought", "any"))
                .groupby(["hour", "channel"]).agg(sessions=("bought", "size"), converted=("bought", "sum")))
    return pd.concat([counts, sessions], axis=1).fillna(0).reset_index()


def check(ws: Workspace, now: datetime | None = None) -> dict:
    """The last hour per channel (and all together) against its baseline; `alerts` lists what should page
    someone, `skipped` says why nothing could be checked."""
    cfg = ws.settings().monitor
    end = pd.Timestamp(now or datetime.now(timezone.utc)).tz_convert("UTC").floor("min")
    span = max(24 * cfg.live_baseline_days, cfg.live_baseline_hours) + 1
    log = open_log(ws)
    try:
        events, oldest = _events(log, end - span * HOUR, end)
    finally:
        log.close()
    out = {"checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alerts": []}
    hours = 0.0 if oldest is None else max(0.0, (end - oldest) / HOUR)  # the log's span before `end`
    covered = int(hours) - 1  # the hours before `end` it covers whole: 0 is the checked one
    if covered < 1:
        return out | {"skipped": f"too little data: the event log holds {hours:.1f} hours of events before "
                                  f"{end:%Y-%m-%d %H:%M} UTC; the live check needs two whole hours (the checked hour and "
                                  "one before it), so nothing was checked"}
    base = [24 * d for d in range(1, cfg.live_baseline_days + 1) if 24 * d <= covered]
    described = f"the same hour on {len(base)} earlier day(s)"
    if not base:
        base = list(range(1, min(cfg.live_baseline_hours, covered) + 1))
        described = f"the {len(base)} hour(s) before it (the log covers less than a day)"
    when = f"{end - HOUR:%Y-%m-%d %H:%M}..{end:%H:%M} UTC"
    live = dataclasses.replace(cfg, conversion_drop=cfg.live_conversion_drop)
    checks, alerts = monitor.compare(hourly(events, end), "hour", base, [(when, [0])], live)
    return out | {"alerts": alerts, "hour": when, "baseline": described, "hourly_checks": checks}

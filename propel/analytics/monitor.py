"""`propel monitor`: is the data flowing and does the churn champion still see the world it learnt from?

- Drift: population stability index (PSI) of every feature of the churn champion, and of its score,
  between its fitting rows (recomputed with the training code's labels and split) and the newest
  snapshot's customers of the same population (bought within `train.churn_lookback_days`). Alerts for
  the score and for the champion's most important features (`monitor.psi_top_features`).
- Freshness: the newest event of every regularly active channel against the newest event overall, the
  newest event against now, and the online store's newest loaded snapshot against the newest event.
- Daily anomalies: for each of the last `recent_days` complete days, a channel's session conversion rate
  falling more than `conversion_drop` below its `baseline_days` rate, or its (or all) events falling more
  than `volume_drop` below the baseline mean; only when the fall is also significant (one-sided binomial /
  Poisson p < `alpha`), so a quiet Sunday on a small shop does not page anyone. Only everyday channels
  (events on `regular_share` of the baseline days) are checked: campaign channels come in bursts.
The result is a JSON-able dict (`data/reports/monitor.json`); any alert makes `propel monitor` exit 1.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from propel.analytics import champions
from propel.features.asof import as_of
from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.config import MonitorSettings, Workspace

DAILY = """
    WITH s AS (SELECT CAST(min(ts) AS DATE) AS day, arg_min(channel, ts) AS channel, bool_or(event_type = 'purchase') AS bought
               FROM events WHERE session_id IS NOT NULL GROUP BY session_id),
    e AS (SELECT CAST(ts AS DATE) AS day, channel, count(*) AS events FROM events GROUP BY ALL)
    SELECT day, channel, coalesce(events, 0) AS events, coalesce(sessions, 0) AS sessions, coalesce(converted, 0) AS converted
    FROM e FULL JOIN (SELECT day, channel, count(*) AS sessions, count(*) FILTER (WHERE bought) AS converted
                      FROM s GROUP BY ALL) USING (day, channel)
    ORDER BY day, channel"""


def psi(expected: pd.Series, actual: pd.Series, bins: int = 10) -> float:
    """Population stability index: sum of (a - e) ln(a / e) over bins (reference deciles, or categories;
    missing values are a bin of their own)."""
    eps = 1e-4
    if pd.api.types.is_numeric_dtype(expected) and not pd.api.types.is_bool_dtype(expected):
        e, a = expected.astype(float), actual.astype(float)
        edges = np.unique(np.nanquantile(e, np.linspace(0, 1, bins + 1)[1:-1])) if e.notna().any() else np.array([])
        codes_e = np.where(e.isna(), -1, np.searchsorted(edges, e, side="right"))
        codes_a = np.where(a.isna(), -1, np.searchsorted(edges, a, side="right"))
    else:
        codes_e, codes_a = expected.astype("string").fillna("<missing>"), actual.astype("string").fillna("<missing>")
    share_e = pd.Series(codes_e).value_counts(normalize=True)
    share_a = pd.Series(codes_a).value_counts(normalize=True)
    both = share_e.index.union(share_a.index)
    pe, pa = share_e.reindex(both, fill_value=0).clip(lower=eps), share_a.reindex(both, fill_value=0).clip(lower=eps)
    return float(((pa - pe) * np.log(pa / pe)).sum())


def drift(ws: Workspace, cfg: MonitorSettings) -> dict:
    """PSI per feature and of the score, churn champion's fitting rows vs the newest snapshot."""
    loaded = champions.load(ws, "churn")
    if loaded is None:
        return {"skipped": "no churn champion yet (propel train churn)"}
    model, version = loaded
    rows = champions.churn_training_rows(ws)
    fitted = rows[rows["split"].isin(["train", "valid"])][["customer_id", "event_timestamp"]]
    reference = champions.score(ws, model, fitted.sample(min(len(fitted), cfg.sample_rows), random_state=0))
    newest = load_catalog(ws)["cutoffs"][-1]
    snap = as_of(ws, date.fromisoformat(newest), columns=["days_since_last_purchase"])
    active = snap.loc[snap["days_since_last_purchase"] <= ws.settings().train.churn_lookback_days, ["customer_id"]]
    active = active.sample(min(len(active), cfg.sample_rows), random_state=0).assign(event_timestamp=pd.Timestamp(newest))
    current = champions.score(ws, model, active)
    importance = pd.Series(model.booster.feature_importance("gain"), index=model.features).sort_values(ascending=False)
    top = set(importance.index[:cfg.psi_top_features])
    features = [{"feature": f, "psi": round(psi(reference[f], current[f]), 4), "top": f in top,
                 "importance_rank": int(importance.index.get_loc(f)) + 1} for f in model.features]
    features.sort(key=lambda r: -r["psi"])
    return {"model": f"churn v{version}", "reference_rows": len(reference), "current_rows": len(current),
            "snapshot": newest, "score_psi": round(psi(reference["score"], current["score"]), 4),
            "score_mean_reference": float(reference["score"].mean()), "score_mean_current": float(current["score"].mean()),
            "features": features}


def freshness(ws: Workspace, con, now: datetime) -> dict:
    """Newest event overall and per channel (with how regular the channel is), and the online store's newest load."""
    per_channel = con.execute("""
        WITH d AS (SELECT channel, CAST(ts AS DATE) AS day, max(ts) AS newest FROM events GROUP BY ALL),
        span AS (SELECT max(day) AS last_day FROM d)
        SELECT channel, max(newest) AS newest,
               count(*) FILTER (WHERE day > last_day - 28) / 28.0 AS active_day_share
        FROM d, span GROUP BY channel ORDER BY channel""").df()
    newest = per_channel["newest"].max()
    out = {"now": now.isoformat(timespec="seconds"), "newest_event": newest.isoformat(),
           "data_age_days": round((now.replace(tzinfo=None) - newest).total_seconds() / 86400, 2),
           "channels": [{"channel": r.channel, "newest": r.newest.isoformat(),
                         "lag_days": round((newest - r.newest).total_seconds() / 86400, 2),
                         "active_day_share": round(r.active_day_share, 2)} for r in per_channel.itertuples()]}
    out["online_store"] = _online_loaded(ws, newest)
    return out


def _online_loaded(ws: Workspace, newest: pd.Timestamp) -> dict:
    from propel.featurestore import store as fstore

    try:
        views = fstore.feature_store(ws).list_feature_views()
    except Exception as exc:  # noqa: BLE001 - no registry yet is a finding, not a crash
        return {"loaded_until": None, "note": f"no feature store registry ({type(exc).__name__})"}
    ends = [end for v in views if v.name != "customer_profile" for _, end in v.materialization_intervals]
    if not ends:
        return {"loaded_until": None, "note": "nothing materialized yet (propel features materialize)"}
    loaded = max(ends).astimezone(timezone.utc).replace(tzinfo=None)
    return {"loaded_until": loaded.isoformat(timespec="seconds"),
            "lag_days": round((newest - pd.Timestamp(loaded)).total_seconds() / 86400, 2)}


def daily(con) -> pd.DataFrame:
    return con.execute(DAILY).df()


COUNTS = ["events", "sessions", "converted"]


def drop_alerts(got: pd.Series, periods: int, mean_events: float, rate: float, sessions_per_period: float,
                cfg: MonitorSettings, channel: str, when: str, key: str = "day") -> list[dict]:
    """Volume and conversion alerts for `got` (summed over `periods` periods: days, or hours for the live
    check) against the baseline's means per period."""
    alerts = []
    expected = mean_events * periods
    if mean_events >= cfg.min_baseline and got["events"] < (1 - cfg.volume_drop) * expected:
        p = float(stats.poisson.cdf(got["events"], expected))
        if p < cfg.alpha:
            alerts.append({"kind": "volume", "subject": channel, key: when, "p_value": p,
                           "message": f"{channel}: {int(got['events']):,} events on {when}, baseline {expected:,.0f} "
                                      f"(more than {cfg.volume_drop:.0%} down)"})
    if sessions_per_period >= cfg.min_baseline and got["sessions"] > 0 and rate > 0 \
            and got["converted"] / got["sessions"] < (1 - cfg.conversion_drop) * rate:
        p = float(stats.binom.cdf(got["converted"], got["sessions"], rate))
        if p < cfg.alpha:
            alerts.append({"kind": "conversion", "subject": channel, key: when, "p_value": p,
                           "message": f"{channel}: conversion {got['converted'] / got['sessions']:.1%} on {when} "
                                      f"({int(got['converted'])}/{int(got['sessions'])} sessions), baseline {rate:.1%}"})
    return alerts


def compare(table: pd.DataFrame, key: str, base: list, periods: list[tuple[str, list]],
            cfg: MonitorSettings) -> tuple[list[dict], list[dict]]:
    """(checks, alerts) per channel of `table` (rows per `key` period and channel) and for all channels
    together: each of `periods` (a label, the periods it sums) against the mean of the `base` periods.
    Only regular channels (events in `regular_share` of the base periods) alert: campaigns come in bursts."""
    total = table.groupby(key)[COUNTS].sum().assign(channel="(all)").reset_index()
    checks, alerts = [], []
    for channel, rows in pd.concat([table, total]).groupby("channel"):
        by_period = rows.set_index(key)[COUNTS]
        baseline = by_period.reindex(base, fill_value=0)
        b = baseline.sum()
        mean_events, sessions_per_period = b["events"] / len(base), b["sessions"] / len(base)
        rate = b["converted"] / b["sessions"] if b["sessions"] else 0.0
        regular = (baseline["events"] > 0).mean() >= cfg.regular_share
        for when, keys in periods:
            got = by_period.reindex(keys, fill_value=0).sum()
            checks.append({key: when, "channel": channel, "events": int(got["events"]),
                           "baseline_events": round(mean_events * len(keys), 1), "sessions": int(got["sessions"]),
                           "conversion_rate": round(got["converted"] / got["sessions"], 4) if got["sessions"] else None,
                           "baseline_conversion_rate": round(rate, 4) if b["sessions"] else None})
            if regular:
                alerts += drop_alerts(got, len(keys), mean_events, rate, sessions_per_period, cfg, channel, when, key)
    return checks, alerts


def anomalies(table: pd.DataFrame, cfg: MonitorSettings, now: datetime) -> tuple[list[dict], list[dict]]:
    """(checks, alerts): each of the last complete days, and those days together (more power for a break
    that lasts), against the days before them."""
    table = table.assign(day=pd.to_datetime(table["day"]))
    complete = table.loc[table["day"] + pd.Timedelta(days=1) <= pd.Timestamp(now.replace(tzinfo=None)), "day"]
    if complete.empty:
        return [], []
    last = complete.max()
    recent = pd.date_range(last - pd.Timedelta(days=cfg.recent_days - 1), last)
    base_days = table.loc[(table["day"] < recent[0]) & (table["day"] >= recent[0] - pd.Timedelta(days=cfg.baseline_days)), "day"].unique()
    if len(base_days) == 0:
        return [], []
    periods = [(d.date().isoformat(), [d]) for d in recent] + [(f"{recent[0].date()}..{recent[-1].date()}", list(recent))]
    return compare(table, "day", list(base_days), periods, cfg)


def check(ws: Workspace, now: datetime | None = None) -> dict:
    """Every monitor check; `alerts` lists what should page someone."""
    cfg = ws.settings().monitor
    now = now or datetime.now(timezone.utc)
    con = Lake(ws).connect()
    fresh = freshness(ws, con, now)
    checks, alerts = anomalies(daily(con), cfg, now)
    if fresh["data_age_days"] > cfg.max_data_age_days:
        alerts.append({"kind": "freshness", "subject": "events", "message": f"the newest event is {fresh['data_age_days']} "
                       f"days old (limit {cfg.max_data_age_days})"})
    for c in fresh["channels"]:
        if c["active_day_share"] >= cfg.regular_share and c["lag_days"] > cfg.max_channel_lag_days:
            alerts.append({"kind": "freshness", "subject": c["channel"], "message": f"{c['channel']}: no events for "
                           f"{c['lag_days']} days before the newest event (an everyday channel; limit {cfg.max_channel_lag_days})"})
    online = fresh["online_store"]
    if online.get("lag_days") is not None and online["lag_days"] > cfg.max_online_lag_days:
        alerts.append({"kind": "freshness", "subject": "online store", "message": f"the online store was loaded up to "
                       f"{online['loaded_until']}, {online['lag_days']} days before the newest event"})
    try:
        drifted = drift(ws, cfg)
    except FileNotFoundError as exc:  # no features built yet
        drifted = {"skipped": str(exc)}
    if "score_psi" in drifted:
        if drifted["score_psi"] > cfg.psi_alert:
            alerts.append({"kind": "drift", "subject": "churn score", "message": f"churn score PSI {drifted['score_psi']:.3f} "
                           f"(limit {cfg.psi_alert})"})
        alerts += [{"kind": "drift", "subject": f["feature"], "message": f"{f['feature']} PSI {f['psi']:.3f} (limit "
                    f"{cfg.psi_alert}; importance rank {f['importance_rank']})"}
                   for f in drifted["features"] if f["top"] and f["psi"] > cfg.psi_alert]
    return {"checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alerts": alerts,
            "freshness": fresh, "drift": drifted, "daily_checks": checks}


def write(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path

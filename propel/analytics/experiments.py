"""Campaign A/B results from the control groups: lift in conversion and revenue per customer, with
confidence intervals and p-values, a sample-ratio-mismatch check, and incremental revenue minus cost.

Every campaign touch is a unit: treatment (contacted) or control (randomly held out, never contacted).
It converts when the customer orders within `train.response_window_days` after the send (the response
label's definition); its revenue is what they spent in that window. Touches whose window has not ended
are left out. Conversion lift: difference of proportions, Wald interval, two-sided pooled z-test.
Revenue per customer: Welch's t-test and interval. SRM: chi-square of the treatment/control counts
against the planned split (`analytics.control_share`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from propel.lake.tables import Lake
from propel.config import Workspace

OUTCOMES = """
    WITH end_ AS (SELECT max(ts) AS end_ts FROM events)
    SELECT t.campaign_id, c.channel, t."group", t.customer_id,
           count(e.ts) > 0 AS converted, coalesce(sum(e.revenue), 0) AS revenue
    FROM campaign_touches t JOIN campaigns c USING (campaign_id) CROSS JOIN end_
    LEFT JOIN events e ON e.customer_id = t.customer_id AND e.event_type = 'purchase'
         AND e.ts >= t.sent_at AND e.ts < t.sent_at + INTERVAL {days} DAY
    WHERE t.sent_at + INTERVAL {days} DAY <= end_.end_ts
    GROUP BY t.campaign_id, c.channel, t."group", t.customer_id, t.sent_at"""


def outcomes(con, window_days: int) -> pd.DataFrame:
    """One row per touch: campaign_id, channel, group, customer_id, converted, revenue (in the window)."""
    return con.execute(OUTCOMES.format(days=int(window_days))).df()


def compare(treated: pd.DataFrame, control: pd.DataFrame, control_share: float, confidence: float) -> dict:
    """The A/B statistics of one experiment (rows with `converted` and `revenue`)."""
    nt, nc = len(treated), len(control)
    out = {"treated": nt, "control": nc, "control_share": nc / max(nt + nc, 1)}
    out["srm_p"] = float(stats.chisquare([nt, nc], [(nt + nc) * (1 - control_share), (nt + nc) * control_share]).pvalue) \
        if nt and nc else np.nan
    if nt < 2 or nc < 2:
        return out
    z = stats.norm.ppf(0.5 + confidence / 2)
    ct, cc = treated["converted"].sum(), control["converted"].sum()
    pt, pc = ct / nt, cc / nc
    se = np.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    pooled = (ct + cc) / (nt + nc)
    se0 = np.sqrt(pooled * (1 - pooled) * (1 / nt + 1 / nc))
    welch = stats.ttest_ind(treated["revenue"], control["revenue"], equal_var=False)
    ci = welch.confidence_interval(confidence)
    rt, rc = treated["revenue"].mean(), control["revenue"].mean()
    out.update({
        "rate_treated": pt, "rate_control": pc, "lift": pt - pc, "lift_low": pt - pc - z * se, "lift_high": pt - pc + z * se,
        "relative_lift": (pt / pc - 1) if pc > 0 else np.nan,
        "lift_p": float(2 * stats.norm.sf(abs(pt - pc) / se0)) if se0 > 0 else np.nan,
        "rpc_treated": rt, "rpc_control": rc, "rpc_lift": rt - rc, "rpc_low": float(ci.low), "rpc_high": float(ci.high),
        "rpc_p": float(welch.pvalue) if np.isfinite(welch.pvalue) else np.nan,
        "incremental_conversions": (pt - pc) * nt, "incremental_revenue": (rt - rc) * nt,
        "incremental_revenue_low": float(ci.low) * nt, "incremental_revenue_high": float(ci.high) * nt})
    return out


def ab_tests(ws: Workspace) -> pd.DataFrame:
    """One row per campaign, then one per channel (all its campaigns pooled): the statistics of `compare`,
    SRM flag, cost, incremental revenue minus cost and its ROI."""
    cfg, window = ws.settings().analytics, ws.settings().train.response_window_days
    con = Lake(ws).connect()
    touches = outcomes(con, window)
    costs = con.execute("SELECT campaign_id, channel, cost, offer_type, CAST(start_at AS DATE) AS start FROM campaigns").df()
    rows = []
    for level, key in (("campaign", "campaign_id"), ("channel", "channel")):
        for value, group in touches.groupby(key):
            stats_ = compare(group[group["group"] == "treatment"], group[group["group"] == "control"],
                             cfg.control_share, cfg.confidence)
            rows.append({"level": level, "key": value, **stats_})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    cost = pd.concat([costs.set_index("campaign_id")["cost"], costs.groupby("channel")["cost"].sum()])
    info = costs.set_index("campaign_id")
    table["channel"] = table["key"].map(info["channel"]).fillna(table["key"])
    table["offer_type"] = table["key"].map(info["offer_type"])
    table["start"] = table["key"].map(info["start"])
    table["cost"] = table["key"].map(cost).fillna(0.0)
    table["srm"] = table["srm_p"] < cfg.srm_alpha
    if "incremental_revenue" in table:
        table["net"] = table["incremental_revenue"] - table["cost"]
        table["roi"] = table["net"] / table["cost"].where(table["cost"] > 0)
    return table

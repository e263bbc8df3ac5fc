"""Campaign A/B results from the control groups: lift in conversion and revenue per customer, with
confidence intervals, p-values adjusted for the number of campaigns, CUPED variance reduction, the
minimum detectable effect, a sample-ratio-mismatch check, and incremental revenue minus cost.

Every campaign touch is a unit: treatment (contacted) or control (randomly held out, never contacted).
It converts when the customer orders within `train.response_window_days` after the send (the response
label's definition); its revenue is what they spent in that window. Touches whose window has not ended
are left out.
- Conversion lift: difference of proportions with Newcombe's hybrid score interval (Wilson intervals of
  each rate combined; the Wald interval is too narrow at campaign conversion rates of a few percent), and
  the two-sided pooled z-test. Revenue per customer: Welch's t-test and interval.
- CUPED (Deng et al. 2013): each outcome minus theta x (its customer's pre-period value - the mean), with the
  pre-period the `PRE_DAYS` before the send (orders for conversion, revenue for revenue) and theta pooled
  over both groups; randomisation makes the adjusted difference unbiased, and its variance is smaller by
  the squared correlation (`*_variance_reduction`).
- Multiple testing: the CUPED p-values are adjusted with Benjamini-Hochberg across the rows of one level
  (all campaigns shown; all channels), and the verdict uses the adjusted ones.
- MDE: the smallest absolute lift the test detects with 80% power at the same level (two-sided), from
  the control rate, the group sizes and the CUPED variance reduction; "no verdict" states it.
- SRM: chi-square of the treatment/control counts against the planned split (`analytics.control_share`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from propel.lake.tables import Lake
from propel.config import Workspace

PRE_DAYS = 90  # CUPED's pre-period: long enough that most active customers have ordered in it
POWER = 0.8  # of the minimum detectable effect

OUTCOMES = """
    WITH end_ AS (SELECT max(ts) AS end_ts FROM events),
    sent AS (SELECT t.campaign_id, c.channel, t."group", t.customer_id, t.sent_at
             FROM campaign_touches t JOIN campaigns c USING (campaign_id) CROSS JOIN end_
             WHERE t.sent_at + INTERVAL {days} DAY <= end_.end_ts),
    buys AS (SELECT customer_id, ts, revenue FROM events WHERE event_type = 'purchase')
    SELECT s.campaign_id, s.channel, s."group", s.customer_id, s.sent_at,
           count(b.ts) FILTER (WHERE b.ts >= s.sent_at) > 0 AS converted,
           coalesce(sum(b.revenue) FILTER (WHERE b.ts >= s.sent_at), 0) AS revenue,
           count(b.ts) FILTER (WHERE b.ts < s.sent_at) > 0 AS pre_converted,
           coalesce(sum(b.revenue) FILTER (WHERE b.ts < s.sent_at), 0) AS pre_revenue
    FROM sent s LEFT JOIN buys b ON b.customer_id = s.customer_id
         AND b.ts >= s.sent_at - INTERVAL {pre} DAY AND b.ts < s.sent_at + INTERVAL {days} DAY
    GROUP BY s.campaign_id, s.channel, s."group", s.customer_id, s.sent_at"""


def outcomes(con, window_days: int) -> pd.DataFrame:
    """One row per touch: campaign_id, channel, group, customer_id, sent_at, converted, revenue (in the window), and
    pre_converted, pre_revenue (the `PRE_DAYS` before the send)."""
    return con.execute(OUTCOMES.format(days=int(window_days), pre=PRE_DAYS)).df()


def cuped(y_t: np.ndarray, y_c: np.ndarray, x_t: np.ndarray, x_c: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Both groups' outcomes adjusted by the pooled regression on the pre-period covariate, and the share of
    the outcome's variance removed (0 when the covariate is constant)."""
    y, x = np.r_[y_t, y_c].astype(float), np.r_[x_t, x_c].astype(float)
    var_x = x.var()
    theta = np.cov(y, x, bias=True)[0, 1] / var_x if var_x > 0 else 0.0
    adjusted = y - theta * (x - x.mean())
    reduction = 1 - adjusted.var() / y.var() if y.var() > 0 else 0.0
    return adjusted[: len(y_t)], adjusted[len(y_t):], float(reduction)


def _welch(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Welch's (low, high, p) for mean(a) - mean(b)."""
    test = stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return float(ci.low), float(ci.high), float(test.pvalue) if np.isfinite(test.pvalue) else np.nan


def mde(rate_control: float, n_treated: int, n_control: int, confidence: float, variance_reduction: float = 0.0) -> float:
    """Smallest absolute conversion lift detected with `POWER` (two-sided, level 1 - confidence): Cohen's h
    from statsmodels' power solver, turned back into a difference of rates; CUPED shrinks it by
    sqrt(1 - variance reduction)."""
    h = NormalIndPower().solve_power(nobs1=n_treated, ratio=n_control / n_treated, alpha=1 - confidence, power=POWER)
    h *= np.sqrt(max(1 - variance_reduction, 0.0))
    base = np.arcsin(np.sqrt(np.clip(rate_control, 0, 1)))
    return float(np.sin(min(base + h / 2, np.pi / 2)) ** 2 - rate_control)


def compare(treated: pd.DataFrame, control: pd.DataFrame, control_share: float, confidence: float) -> dict:
    """The A/B statistics of one experiment (rows with `converted` and `revenue`, and optionally the
    pre-period `pre_converted` and `pre_revenue` for CUPED)."""
    nt, nc = len(treated), len(control)
    out = {"treated": nt, "control": nc, "control_share": nc / max(nt + nc, 1)}
    out["srm_p"] = float(stats.chisquare([nt, nc], [(nt + nc) * (1 - control_share), (nt + nc) * control_share]).pvalue) \
        if nt and nc else np.nan
    if nt < 2 or nc < 2:
        return out
    ct, cc = int(treated["converted"].sum()), int(control["converted"].sum())
    pt, pc = ct / nt, cc / nc
    low, high = confint_proportions_2indep(ct, nt, cc, nc, method="newcomb", compare="diff", alpha=1 - confidence)
    lift_p = proportions_ztest([ct, cc], [nt, nc])[1] if 0 < ct + cc < nt + nc else np.nan
    rt, rc = treated["revenue"].mean(), control["revenue"].mean()
    rpc_low, rpc_high, rpc_p = _welch(treated["revenue"].to_numpy(float), control["revenue"].to_numpy(float), confidence)
    out.update({
        "rate_treated": pt, "rate_control": pc, "lift": pt - pc, "lift_low": float(low), "lift_high": float(high),
        "relative_lift": (pt / pc - 1) if pc > 0 else np.nan, "lift_p": float(lift_p),
        "rpc_treated": rt, "rpc_control": rc, "rpc_lift": rt - rc, "rpc_low": rpc_low, "rpc_high": rpc_high, "rpc_p": rpc_p,
        "incremental_conversions": (pt - pc) * nt, "incremental_revenue": (rt - rc) * nt,
        "incremental_revenue_low": rpc_low * nt, "incremental_revenue_high": rpc_high * nt})
    for name, y, x in (("lift", "converted", "pre_converted"), ("rpc", "revenue", "pre_revenue")):
        if x not in treated:
            y_t, y_c, reduction = treated[y].to_numpy(float), control[y].to_numpy(float), 0.0
        else:
            y_t, y_c, reduction = cuped(treated[y].to_numpy(float), control[y].to_numpy(float),
                                        treated[x].to_numpy(float), control[x].to_numpy(float))
        c_low, c_high, c_p = _welch(y_t, y_c, confidence)
        out.update({f"{name}_cuped": y_t.mean() - y_c.mean(), f"{name}_cuped_low": c_low, f"{name}_cuped_high": c_high,
                    f"{name}_cuped_p": c_p, f"{name}_variance_reduction": reduction})
    out["mde"] = mde(pc, nt, nc, confidence, out["lift_variance_reduction"])
    return out


def verdicts(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Benjamini-Hochberg adjusted CUPED p-values within each level, and a verdict per row: lift / loss when
    the adjusted conversion p-value is below 1 - confidence, else no verdict with the MDE as the reason."""
    alpha = 1 - confidence
    table = table.copy()
    for name in ("lift", "rpc"):
        table[f"{name}_p_adjusted"] = np.nan
        for _, rows in table.groupby("level"):
            p = rows[f"{name}_cuped_p"]
            ok = p.notna()
            if ok.any():
                table.loc[p[ok].index, f"{name}_p_adjusted"] = multipletests(p[ok], method="fdr_bh")[1]
    significant = table["lift_p_adjusted"] < alpha
    table["verdict"] = np.where(
        significant, np.where(table["lift_cuped"] > 0, "lift", "loss"),
        [f"no verdict: detects only lifts of {m:+.1%} or more" if np.isfinite(m) else "no verdict: too few touches"
         for m in table["mde"]])
    return table


def ab_tests(ws: Workspace) -> pd.DataFrame:
    """One row per campaign, then one per channel (all its campaigns pooled): the statistics of `compare`,
    adjusted p-values and verdict, SRM flag, cost, incremental revenue minus cost and its ROI."""
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
        table = verdicts(table, cfg.confidence)
        table["net"] = table["incremental_revenue"] - table["cost"]
        table["roi"] = table["net"] / table["cost"].where(table["cost"] > 0)
    return table

"""The report's drill-down data: additive facts by period x channel x city tier x segment, which the page's
script filters and re-adds (so every total it shows is a sum over the cells the filters keep).

- `kpi`: by order period, the channel the session or order was on, and the customer's city tier and segment:
  sessions, converted sessions, orders, revenue, new customers (first orders).
- `attribution`: by the converting order's period, the touch's marketing channel, tier and segment: the
  conversions and revenue each path model (rule-based and data-driven Shapley) credits. The Markov models
  value the whole chain at once, so they are not re-added per filter (the section's tables show them).
- `campaigns`: by campaign, its channel, the send's period, tier, segment and group (treatment or control):
  touches, conversions, revenue and revenue squared, enough for rates, lifts, Newcombe intervals and
  Welch standard errors of any selection.

A customer's tier is `city_tier` from the CRM record and the segment is the newest `rfm_segment`; anonymous
visitors, customers without the CRM column and customers without a segment are "(unknown)".
"""

from __future__ import annotations

import pandas as pd

from propel.analytics import experiments
from propel.analytics.attribution import PATH_MODELS, Attribution
from propel.analytics.kpis import ORDERS

UNKNOWN = "(unknown)"
DIMENSIONS = ("period", "channel", "tier", "segment")


def customer_dimensions(con, segments: pd.DataFrame | None) -> pd.DataFrame:
    """customer_id, tier, segment for every customer of the lake (and every segmented one)."""
    columns = set(con.execute("SELECT * FROM customers LIMIT 0").df().columns)
    tier = "CAST(city_tier AS VARCHAR)" if "city_tier" in columns else "NULL"
    dims = con.execute(f"SELECT customer_id, {tier} AS tier FROM customers").df()
    if segments is not None and len(segments):
        dims = dims.merge(segments[["customer_id", "rfm_segment"]].rename(columns={"rfm_segment": "segment"}),
                          on="customer_id", how="outer")
    else:
        dims["segment"] = None
    dims["tier"] = dims["tier"].where(dims["tier"].notna(), UNKNOWN).map(lambda t: f"tier {t}" if t != UNKNOWN else t)
    dims["segment"] = dims["segment"].astype(object).where(dims["segment"].notna(), UNKNOWN)
    return dims.drop_duplicates("customer_id")


def _kpi(con, freq: str) -> pd.DataFrame:
    return con.execute(f"""
        WITH o AS ({ORDERS}),
        s AS (SELECT session_id, arg_min(customer_id, ts) AS customer_id, min(ts) AS ts, arg_min(channel, ts) AS channel,
                     bool_or(event_type = 'purchase') AS bought
              FROM events WHERE session_id IS NOT NULL GROUP BY session_id),
        facts AS (
            SELECT customer_id, date_trunc('{freq}', ts) AS period, channel, 1 AS sessions, CAST(bought AS INTEGER) AS converted,
                   0 AS orders, 0.0 AS revenue, 0 AS new_customers FROM s
            UNION ALL
            SELECT customer_id, date_trunc('{freq}', ts), channel, 0, 0, 1, revenue, CAST(first_order AS INTEGER) FROM o)
        SELECT CAST(CAST(period AS DATE) AS VARCHAR) AS period, channel, coalesce(d.tier, '{UNKNOWN}') AS tier,
               coalesce(d.segment, '{UNKNOWN}') AS segment, sum(sessions) AS sessions, sum(converted) AS converted,
               sum(orders) AS orders, sum(revenue) AS revenue, sum(new_customers) AS new_customers
        FROM facts LEFT JOIN dims d USING (customer_id)
        WHERE period <= (SELECT max(ts) FROM events)
        GROUP BY ALL ORDER BY ALL""").df()


def _attribution(result: Attribution, dims: pd.DataFrame, freq: str) -> pd.DataFrame:
    c = result.credits.merge(dims, on="customer_id", how="left").fillna({"tier": UNKNOWN, "segment": UNKNOWN})
    c["period"] = c["order_ts"].dt.to_period({"week": "W", "month": "M", "day": "D"}[freq]).dt.start_time.dt.strftime("%Y-%m-%d")
    measures = {}
    for model in PATH_MODELS:
        measures[f"{model}:conversions"] = c[model]
        measures[f"{model}:revenue"] = c[model] * c["revenue"]
    frame = pd.concat([c[list(DIMENSIONS)], pd.DataFrame(measures)], axis=1)
    return frame.groupby(list(DIMENSIONS), as_index=False).sum()


def _campaigns(con, window_days: int, dims: pd.DataFrame, freq: str) -> pd.DataFrame:
    o = experiments.outcomes(con, window_days).merge(dims, on="customer_id", how="left").fillna({"tier": UNKNOWN, "segment": UNKNOWN})
    o["period"] = o["sent_at"].dt.to_period({"week": "W", "month": "M", "day": "D"}[freq]).dt.start_time.dt.strftime("%Y-%m-%d")
    o = o.assign(touches=1, conversions=o["converted"].astype(int), revenue_sq=o["revenue"] ** 2)
    return o.groupby(["campaign_id", *DIMENSIONS, "group"], as_index=False)[["touches", "conversions", "revenue", "revenue_sq"]].sum()


def _columns(frame: pd.DataFrame) -> dict:
    """Column-wise JSON (smaller than records): {column: [values]}, floats rounded to 4 decimals."""
    out = {}
    for col in frame.columns:
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            values = values.round(4)
        out[col] = values.tolist()
    return out


def facts(ws, con, freq: str, segments: pd.DataFrame | None, result: Attribution | None) -> dict:
    """Everything the page's filters need, as JSON-ready columns, with each dimension's values in order."""
    dims = customer_dimensions(con, segments)
    con.register("dims", dims)
    kpi = _kpi(con, freq)
    campaigns = _campaigns(con, ws.settings().train.response_window_days, dims, freq)
    attribution = _attribution(result, dims, freq) if result is not None else pd.DataFrame(columns=list(DIMENSIONS))
    values = {d: sorted({*kpi[d], *attribution[d], *campaigns[d]}) for d in DIMENSIONS}
    return {"freq": freq, "models": list(PATH_MODELS), "values": values, "kpi": _columns(kpi),
            "attribution": _columns(attribution), "campaigns": _columns(campaigns),
            "confidence": ws.settings().analytics.confidence}


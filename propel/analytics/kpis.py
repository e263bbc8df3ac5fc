"""Business KPIs from the lake: over time, by channel, and retention cohorts. SQL over the lake views.

Definitions (the report states them too): an *order* is the purchases of one session (or a purchase
without a session); *conversion rate* = sessions with an order / sessions; *active customers* = customers
with an order in the period; *AOV* = revenue / orders; *repeat rate* = share of the period's buyers who
had bought before it; *new customers* = customers whose first order is in the period; *CAC* = campaign
cost of the period (by start date) / new customers.
"""

from __future__ import annotations

import pandas as pd

ORDERS = """
    SELECT customer_id, order_id, ts, channel, revenue,
           row_number() OVER (PARTITION BY customer_id ORDER BY ts, order_id) = 1 AS first_order
    FROM (SELECT customer_id, coalesce(session_id, event_id) AS order_id, min(ts) AS ts, arg_min(channel, ts) AS channel,
                 coalesce(sum(revenue), 0) AS revenue
          FROM events WHERE event_type = 'purchase' GROUP BY customer_id, coalesce(session_id, event_id))"""
PERIODS = {"day": "day", "week": "week", "month": "month"}


def _period(freq: str) -> str:
    if freq not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not '{freq}'")
    return f"date_trunc('{freq}', {{col}})"


def over_time(con, freq: str = "week") -> pd.DataFrame:
    """One row per period: sessions, visitors, orders, active customers, revenue, AOV, conversion rate,
    repeat rate, new customers, campaign cost and CAC."""
    p = _period(freq)
    return con.execute(f"""
        WITH o AS ({ORDERS}),
        s AS (SELECT {p.format(col='min(ts)')} AS period, session_id, bool_or(event_type = 'purchase') AS bought
              FROM events WHERE session_id IS NOT NULL GROUP BY session_id),
        first_buy AS (SELECT customer_id, min(ts) AS first_ts FROM o GROUP BY 1),
        sessions AS (SELECT period, count(*) AS sessions, count(*) FILTER (WHERE bought) AS converted FROM s GROUP BY 1),
        visitors AS (SELECT {p.format(col='ts')} AS period, count(DISTINCT customer_id) AS visitors FROM events GROUP BY 1),
        buyers AS (SELECT {p.format(col='o.ts')} AS period, count(*) AS orders, sum(revenue) AS revenue,
                          count(DISTINCT o.customer_id) AS active_customers,
                          count(DISTINCT o.customer_id) FILTER (WHERE f.first_ts < {p.format(col='o.ts')}) AS repeat_buyers,
                          count(*) FILTER (WHERE first_order) AS new_customers
                   FROM o JOIN first_buy f USING (customer_id) GROUP BY 1),
        cost AS (SELECT {p.format(col='start_at')} AS period, sum(cost) AS campaign_cost FROM campaigns GROUP BY 1)
        SELECT CAST(period AS DATE) AS period, coalesce(sessions, 0) AS sessions, coalesce(visitors, 0) AS visitors,
               coalesce(orders, 0) AS orders, coalesce(active_customers, 0) AS active_customers,
               coalesce(revenue, 0) AS revenue, revenue / nullif(orders, 0) AS aov,
               converted / nullif(sessions, 0) AS conversion_rate, repeat_buyers / nullif(active_customers, 0) AS repeat_rate,
               coalesce(new_customers, 0) AS new_customers, coalesce(campaign_cost, 0) AS campaign_cost,
               campaign_cost / nullif(new_customers, 0) AS cac
        FROM visitors FULL JOIN sessions USING (period) FULL JOIN buyers USING (period) FULL JOIN cost USING (period)
        WHERE period <= (SELECT max(ts) FROM events) ORDER BY period""").df()


def by_channel(con) -> pd.DataFrame:
    """Per channel: sessions, conversion rate, orders, revenue, AOV, active customers, new customers (first
    orders) and repeat rate (share of the channel's buyers with an order on it after an earlier one), by the
    channel orders were placed on. CAC per marketing channel is attribution's (cost / attributed first orders)."""
    return con.execute(f"""
        WITH s AS (SELECT arg_min(channel, ts) AS channel, bool_or(event_type = 'purchase') AS bought
                   FROM events WHERE session_id IS NOT NULL GROUP BY session_id),
        o AS (SELECT channel, count(*) AS orders, sum(revenue) AS revenue, count(DISTINCT customer_id) AS active_customers,
                     count(*) FILTER (WHERE first_order) AS new_customers,
                     count(DISTINCT customer_id) FILTER (WHERE NOT first_order) AS repeat_buyers
              FROM ({ORDERS}) GROUP BY 1),
        e AS (SELECT channel, count(*) AS events FROM events GROUP BY 1)
        SELECT channel, events, coalesce(sessions, 0) AS sessions, converted / nullif(sessions, 0) AS conversion_rate,
               coalesce(orders, 0) AS orders, coalesce(revenue, 0) AS revenue, revenue / nullif(orders, 0) AS aov,
               coalesce(active_customers, 0) AS active_customers, coalesce(new_customers, 0) AS new_customers,
               repeat_buyers / nullif(active_customers, 0) AS repeat_rate
        FROM e LEFT JOIN (SELECT channel, count(*) AS sessions, count(*) FILTER (WHERE bought) AS converted
                          FROM s GROUP BY 1) USING (channel) LEFT JOIN o USING (channel)
        ORDER BY revenue DESC NULLS LAST, events DESC""").df()


def retention(con, freq: str = "month") -> pd.DataFrame:
    """Cohorts by first-order period: customers, and the share ordering again k periods later (k = 1, 2, ...)."""
    p = _period(freq)
    table = con.execute(f"""
        WITH o AS ({ORDERS}),
        c AS (SELECT customer_id, {p.format(col='min(ts)')} AS cohort FROM o GROUP BY 1),
        a AS (SELECT DISTINCT customer_id, {p.format(col='ts')} AS period FROM o)
        SELECT CAST(cohort AS DATE) AS cohort, datediff('{freq}', cohort, period) AS k, count(*) AS customers,
               datediff('{freq}', cohort, (SELECT {p.format(col='max(ts)')} FROM o)) AS observed
        FROM a JOIN c USING (customer_id) GROUP BY ALL""").df()
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot(index="cohort", columns="k", values="customers").sort_index().fillna(0)
    observed = table.groupby("cohort")["observed"].first()
    shares = wide.drop(columns=0).div(wide[0], axis=0)
    shares = shares.where(shares.columns.to_numpy()[None, :] <= observed.loc[shares.index].to_numpy()[:, None])
    return shares.assign(customers=wide[0].astype(int))[["customers", *shares.columns]]


def period_for(con) -> str:
    """Week for short histories, month from half a year of data on."""
    days = con.execute("SELECT datediff('day', min(ts), max(ts)) FROM events").fetchone()[0] or 0
    return "month" if days >= 180 else "week"

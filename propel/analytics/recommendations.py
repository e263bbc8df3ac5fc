"""Recommendation impact: impressions, click-through, conversion and revenue of served recommendations,
matched by the `recommendation_id` that /recommend returns and the app sends back on the events that follow.

What was served comes from the service's log (propel/serving/served_log.py: every /recommend answer, with its
model, version, fallback flag and items in order). Without a log, every id seen on an event stands in
for it, which misses the lists nobody reacted to (so CTR is overstated; the report says which was used).
A recommendation is clicked when a `recommendation_click` event carries its id, and converts when a
purchase carries its id; its revenue is those purchases' revenue. Impressions are the items shown; a
click on (purchase of) an item is credited to the position it was shown at.
"""

from __future__ import annotations

import pandas as pd

from propel.config import Workspace
from propel.serving import served_log as log

PER_ID = """
    SELECT recommendation_id, bool_or(event_type = 'recommendation_click') AS clicked,
           bool_or(event_type = 'purchase') AS converted,
           coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
    FROM events WHERE recommendation_id IS NOT NULL GROUP BY 1"""
GROUPS = ("model", "model_version", "fallback")  # columns of the served log that split the impact table
IMPACT = ["served", "impressions", "clicked", "ctr", "converted", "conversion_rate", "conversion_per_click",
          "revenue", "revenue_per_served"]


def impact(con, served: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model, version and fallback flag of the served log (per whichever of these columns it has;
    one row `model = all` without a log): recommendations served, items shown (impressions, when the log has
    them), recommendations clicked, CTR (clicked / served), converted, conversion rate (per served and per
    click), revenue and revenue per served recommendation."""
    seen = con.execute(PER_ID).df()
    if served is None:
        rows, groups = seen.assign(model="all"), ["model"]
    else:
        groups = [c for c in GROUPS if c in served.columns] or ["model"]
        rows = (served.drop_duplicates("recommendation_id").assign(model=lambda d: d.get("model", "all"))
                .merge(seen, on="recommendation_id", how="left"))
        rows[["clicked", "converted"]] = rows[["clicked", "converted"]].astype("boolean").fillna(False).astype(bool)
        rows["revenue"] = rows["revenue"].fillna(0.0)
    if rows.empty:
        return pd.DataFrame(columns=[*groups, *IMPACT])
    sums = {"served": ("recommendation_id", "size"), "clicked": ("clicked", "sum"),
            "converted": ("converted", "sum"), "revenue": ("revenue", "sum")}
    if "items" in rows.columns:
        sums["impressions"] = ("impressions", "sum")
        rows["impressions"] = rows["items"].map(len)
    out = rows.groupby(groups, dropna=False).agg(**sums).reset_index()
    if "impressions" not in out.columns:
        out["impressions"] = pd.NA
    out["ctr"] = out["clicked"] / out["served"]
    out["conversion_rate"] = out["converted"] / out["served"]
    out["conversion_per_click"] = out["converted"] / out["clicked"].where(out["clicked"] > 0)
    out["revenue_per_served"] = out["revenue"] / out["served"]
    return out[[*groups, *IMPACT]]


def by_position(con, served: pd.DataFrame) -> pd.DataFrame:
    """Per position in the list (1 = first): items shown, clicks on and purchases of the item shown there
    (events carrying its recommendation_id and item_id), click-through and purchase rate per impression."""
    shown = served[["recommendation_id", "items"]].explode("items").dropna(subset="items")
    shown = shown.assign(position=shown.groupby(level=0).cumcount() + 1).rename(columns={"items": "item_id"})
    con.register("_shown", shown)
    try:
        out = con.execute("""
            WITH acted AS (SELECT recommendation_id, item_id, bool_or(event_type = 'recommendation_click') AS clicked,
                                  bool_or(event_type = 'purchase') AS bought
                           FROM events WHERE recommendation_id IS NOT NULL AND item_id IS NOT NULL GROUP BY 1, 2)
            SELECT position, count(*) AS impressions, count(*) FILTER (WHERE clicked) AS clicks,
                   count(*) FILTER (WHERE bought) AS purchases
            FROM _shown LEFT JOIN acted USING (recommendation_id, item_id) GROUP BY 1 ORDER BY 1""").df()
    finally:
        con.unregister("_shown")
    return out.assign(ctr=out["clicks"] / out["impressions"], purchase_rate=out["purchases"] / out["impressions"])


def served_log(ws: Workspace) -> pd.DataFrame | None:
    """The service's served-recommendations log, if it has logged anything."""
    return log.read(ws)

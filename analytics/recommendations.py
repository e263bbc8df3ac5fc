"""Recommendation impact: click-through, conversion and revenue of served recommendations, matched by the
`recommendation_id` that the service returns and the app sends back on the events that follow.

Served recommendations are the ids in a served log when one is given (`recommendation_id`, optionally
`model`), else every id seen on any event (the app reports an impression by sending an event with it).
A recommendation is clicked when a `recommendation_click` event carries its id, and converts when a
purchase carries its id; its revenue is those purchases' revenue.
"""

from __future__ import annotations

import pandas as pd

PER_ID = """
    SELECT recommendation_id, bool_or(event_type = 'recommendation_click') AS clicked,
           bool_or(event_type = 'purchase') AS converted,
           coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
    FROM events WHERE recommendation_id IS NOT NULL GROUP BY 1"""


def impact(con, served: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model in the served log (one row `all` without a log): served, clicked, CTR, converted,
    conversion rate (per served and per click), revenue and revenue per served recommendation."""
    seen = con.execute(PER_ID).df()
    if served is None:
        rows = seen.assign(model="all")
    else:
        rows = (served.drop_duplicates("recommendation_id").assign(model=lambda d: d.get("model", "all"))
                [["recommendation_id", "model"]].merge(seen, on="recommendation_id", how="left"))
        rows[["clicked", "converted"]] = rows[["clicked", "converted"]].astype("boolean").fillna(False).astype(bool)
        rows["revenue"] = rows["revenue"].fillna(0.0)
    if rows.empty:
        return pd.DataFrame(columns=["model", "served", "clicked", "ctr", "converted", "conversion_rate",
                                     "conversion_per_click", "revenue", "revenue_per_served"])
    out = rows.groupby("model").agg(served=("recommendation_id", "size"), clicked=("clicked", "sum"),
                                    converted=("converted", "sum"), revenue=("revenue", "sum")).reset_index()
    out["ctr"] = out["clicked"] / out["served"]
    out["conversion_rate"] = out["converted"] / out["served"]
    out["conversion_per_click"] = out["converted"] / out["clicked"].where(out["clicked"] > 0)
    out["revenue_per_served"] = out["revenue"] / out["served"]
    return out[["model", "served", "clicked", "ctr", "converted", "conversion_rate", "conversion_per_click", "revenue",
                "revenue_per_served"]]


def served_log(ws) -> pd.DataFrame | None:
    """Served recommendations logged under `data/served_recommendations/` (Parquet or JSON lines), if any."""
    folder = ws.data / "served_recommendations"
    parts = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
    parts += [pd.read_json(p, lines=True) for p in sorted(folder.glob("*.jsonl"))]
    return pd.concat(parts, ignore_index=True) if parts else None

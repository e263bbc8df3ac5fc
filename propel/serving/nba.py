"""`propel score nba`: next best action. For each customer of the audience, the one campaign with the
highest expected incremental value, or none:

    value(customer, action) = uplift(customer, channel, offer) x expected order value - cost per contact

uplift comes from the uplift champion (T-learner: p(buy | contacted) - p(buy | not contacted)) with
the action's channel and offer as inputs; the expected order value is the customer's 365-day average
order value, or the snapshot's typical one for customers who have not bought. Customers whose best
value is not positive get no action, and so do customers already sent `contact_cap` campaign messages
in the last 30 days (the `touches_30d` feature). Consent is the audience's (see propel.serving.batch).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from propel.lake.tables import Lake
from propel.config import Workspace
from propel.serving.batch import Campaign, Champion, Job, Snapshot, context, label, predict, reasons

ORDER_VALUE, RECENT_CONTACTS = "avg_order_value_365d", "touches_30d"
ACTION_COLUMNS = ("campaign_id", "channel", "offer_type", "cost")


def load_actions(ws: Workspace, path: Path | None, send_at: datetime) -> list[Campaign]:
    """Candidate actions from a CSV/JSON file (campaign_id, channel, offer_type, cost per contact), or the
    lake's campaigns running at `send_at`, each contact costing the campaign's cost over its messages so far."""
    if path is not None:
        if not path.exists():
            raise ValueError(f"--campaigns {path}: no such file")
        df = pd.DataFrame(json.loads(path.read_text())) if path.suffix.lower() == ".json" else pd.read_csv(path)
        missing = [c for c in ACTION_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"--campaigns {path}: missing column(s) {', '.join(missing)}; "
                             f"expected {', '.join(ACTION_COLUMNS)} (cost = cost per contact)")
        if df["cost"].isna().any() or (pd.to_numeric(df["cost"], errors="coerce").fillna(-1) < 0).any():
            raise ValueError(f"--campaigns {path}: cost must be a number >= 0 on every row")
        if df["campaign_id"].duplicated().any():
            raise ValueError(f"--campaigns {path}: campaign_id values must be unique")
    else:
        ts = send_at.replace(tzinfo=None)
        df = Lake(ws).connect().execute("""
            SELECT c.campaign_id, c.channel, coalesce(c.offer_type, 'unknown') AS offer_type,
                   coalesce(c.cost / nullif(t.sent, 0), 0) AS cost
            FROM campaigns c LEFT JOIN (SELECT campaign_id, count(*) AS sent FROM campaign_touches GROUP BY 1) t
              USING (campaign_id)
            WHERE c.start_at <= ? AND c.end_at >= ? ORDER BY c.campaign_id""", [ts, ts]).df()
        if df.empty:
            raise ValueError(f"no campaign in the lake is running at {send_at:%Y-%m-%d %H:%M} UTC; pass --send-at "
                             "within a campaign, or --campaigns FILE (campaign_id, channel, offer_type, cost per contact)")
    return [Campaign(str(r.channel), str(r.offer_type), str(r.campaign_id), float(r.cost)) for r in df.itertuples()]


def typical_order_value(snap: Snapshot) -> float:
    """Mean average order value of the snapshot's buyers: the expected order of someone yet to buy."""
    import duckdb

    value = duckdb.sql(f"SELECT avg({ORDER_VALUE}) FROM ({snap.sql}) WHERE {ORDER_VALUE} > 0").fetchall()[0][0]
    return float(value or 0.0)


def job(champion: Champion, actions: list[Campaign], send_at: datetime, contact_cap: int, top_reasons: int,
        default_order_value: float) -> Job:
    contexts = [context(champion, a, send_at) for a in actions]  # validates each channel/offer against the model
    cost = np.array([a.cost for a in actions])

    def score_chunk(df: pd.DataFrame) -> pd.DataFrame:
        uplift = np.column_stack([predict(champion, df.assign(**ctx))["score"].to_numpy() for ctx in contexts])
        aov = df[ORDER_VALUE].to_numpy(dtype=float) if ORDER_VALUE in df else np.zeros(len(df))
        aov = np.where(aov > 0, aov, default_order_value)
        value = uplift * aov[:, None] - cost[None, :]
        best = value.argmax(axis=1)
        rows = np.arange(len(df))
        at_cap = (df[RECENT_CONTACTS].to_numpy(dtype=float) >= contact_cap) if RECENT_CONTACTS in df else np.zeros(len(df), bool)
        act = (value[rows, best] > 0) & ~at_cap
        pick = [actions[i] for i in best]
        return pd.DataFrame({
            "customer_id": df["customer_id"].to_numpy(),
            "campaign_id": np.where(act, [a.campaign_id for a in pick], None),
            "channel": np.where(act, [a.channel for a in pick], None),
            "offer_type": np.where(act, [a.offer_type for a in pick], None),
            "uplift": uplift[rows, best], "order_value": aov, "cost": cost[best],
            "score": value[rows, best],
            "decile": pd.array([None] * len(df), dtype="Int64"),
            "outcome": np.where(act, "action", np.where(at_cap, "contact cap reached", "no positive value")),
        })

    def explain(df: pd.DataFrame) -> list[str]:  # why the chosen action's uplift is high for this customer
        calendar = {k: v for k, v in contexts[0].items() if k.startswith("request_")}
        return reasons(champion, df.assign(campaign_channel=df["channel"], offer_type=df["offer_type"], **calendar),
                       top_reasons)

    return Job("nba", label(champion), score_chunk, ["campaign_id", "channel", "offer_type", "uplift", "order_value",
                                                    "cost", "score"],
               explain if top_reasons else None, "scored audience",
               {"actions": [a.__dict__ for a in actions], "contact_cap": contact_cap, "send_at": send_at.isoformat(),
                "default_order_value": round(default_order_value, 2)},
               keep="outcome = 'action'", tally="outcome")

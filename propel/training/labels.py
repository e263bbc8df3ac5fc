"""Labels: who churned after a cutoff, who responded to a campaign touch. SQL over the lake.

Each function returns an *entity frame*: `customer_id`, `event_timestamp` (the moment the features
must describe), `label` (0/1), plus context columns. Explicit labels from the workspace's `labels`
table win over derived ones for the same task.
"""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd

CONTEXT_COLUMNS = ("campaign_channel", "offer_type")  # response rows: what was sent, used as features


def explicit(con: duckdb.DuckDBPyConnection, task: str) -> pd.DataFrame | None:
    """The `labels` table rows for a task (ids resolved to the person), or None when there are none."""
    df = con.execute(
        "SELECT m.customer_id, CAST(l.as_of AS TIMESTAMP) AS event_timestamp, CAST(l.label AS INTEGER) AS label "
        "FROM labels l JOIN identity_map m ON m.identity_type = 'customer_id' AND m.identity_value = l.customer_id "
        "WHERE l.task = ? ORDER BY event_timestamp, m.customer_id", [task]).df()
    return df if len(df) else None


def churn(con: duckdb.DuckDBPyConnection, cutoffs: list[date], lookback_days: int, horizon_days: int) -> pd.DataFrame:
    """Non-contractual churn: at cutoff T, customers who bought in [T - lookback, T) and do not buy in
    [T, T + horizon) are churners (label 1). Only cutoffs whose whole horizon is observed are used."""
    end = con.execute("SELECT CAST(max(ts) AS DATE) + 1 FROM events").fetchone()[0]
    usable = [c for c in cutoffs if pd.Timestamp(c) + pd.Timedelta(days=horizon_days) <= pd.Timestamp(end)]
    if not usable:
        return pd.DataFrame(columns=["customer_id", "event_timestamp", "label"])
    con.execute("CREATE OR REPLACE TEMP TABLE label_cutoffs AS SELECT unnest(?::DATE[]) AS T", [usable])
    return con.execute(f"""
        WITH buys AS (SELECT DISTINCT customer_id, CAST(ts AS DATE) AS d FROM events WHERE event_type = 'purchase')
        SELECT customer_id, CAST(T AS TIMESTAMP) AS event_timestamp,
               CASE WHEN bool_or(d >= T) THEN 0 ELSE 1 END AS label
        FROM buys JOIN label_cutoffs ON d >= T - {int(lookback_days)} AND d < T + {int(horizon_days)}
        GROUP BY customer_id, T HAVING bool_or(d < T)
        ORDER BY event_timestamp, customer_id""").df()


def response(con: duckdb.DuckDBPyConnection, window_days: int) -> pd.DataFrame:
    """Campaign response: for every touch (treatment and control), did the customer buy within
    `window_days` after the send? Control rows make uplift estimable; touches whose window is not
    yet over are left out."""
    return con.execute(f"""
        WITH end_ AS (SELECT max(ts) AS end_ts FROM events)
        SELECT t.customer_id, t.sent_at AS event_timestamp, t.campaign_id, t."group",
               coalesce(c.channel, 'unknown') AS campaign_channel, coalesce(c.offer_type, 'unknown') AS offer_type,
               CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.customer_id = t.customer_id AND e.event_type = 'purchase'
                                 AND e.ts >= t.sent_at AND e.ts < t.sent_at + INTERVAL {int(window_days)} DAY)
                    THEN 1 ELSE 0 END AS label
        FROM campaign_touches t LEFT JOIN campaigns c USING (campaign_id), end_
        WHERE t.sent_at + INTERVAL {int(window_days)} DAY <= end_.end_ts
        ORDER BY event_timestamp, t.customer_id, t.campaign_id""").df()


def time_split(times: pd.Series, ids: pd.Series, test_periods: int, valid_share: float, gap_days: float) -> pd.Series:
    """Out-of-time split by distinct days: the latest `test_periods` are 'test'. Rows used for fitting
    must have had their label window (`gap_days`) close before the test starts, as in production;
    the rest is 'gap' (dropped). Among fitting rows, a fixed `valid_share` of *customers* is 'valid'
    (early stopping, calibration): the same person at adjacent cutoffs has nearly the same label, so a
    validation set sharing customers with training would reward memorising them."""
    day = pd.to_datetime(times).dt.tz_localize(None).dt.normalize()
    periods = sorted(day.unique())
    if len(periods) <= test_periods:
        raise ValueError(f"need more than {test_periods} distinct periods for an out-of-time split, found {len(periods)}")
    test_start = periods[-test_periods]
    fit = [p for p in periods if p < test_start and p + pd.Timedelta(days=gap_days) <= test_start]
    if not fit:
        raise ValueError(f"no period ends its {gap_days:g}-day label window before the test period "
                         f"({test_start:%Y-%m-%d}). Add history or shorten the horizon.")
    split = pd.Series("gap", index=times.index)
    split[day.isin(fit)] = "train"
    split[day.isin(fit) & validation_customers(ids, valid_share)] = "valid"
    split[day >= test_start] = "test"
    return split


def validation_customers(ids: pd.Series, share: float) -> np.ndarray:
    """A fixed `share` of customers (by a hash of their id) held out of fitting, as a boolean mask."""
    return (pd.util.hash_pandas_object(ids.astype(str), index=False) % 1000 < share * 1000).to_numpy()


def holdout_split(labels: pd.Series, ids: pd.Series, test_share: float, seed: int) -> pd.Series:
    """Customer-level stratified holdout, for labels that all describe one moment (a CRM extract labelled
    as of its export day): there is no later period to test on. Customers are ordered by a seeded hash of
    their id within their label class and every k-th is 'test' (k = 1 / test_share), so both classes are
    held out in proportion, a customer's rows stay together, and the same customers are held out run
    after run (the champion rule compares models on customers neither saw)."""
    keys = pd.util.hash_pandas_object(ids.astype(str), index=False, hash_key=f"propel{seed:010d}").to_numpy()
    # a customer's class: positive if any of their rows is (merged ids can carry two rows)
    cls = labels.groupby(ids.to_numpy()).transform("max").to_numpy()
    people = pd.DataFrame({"id": ids.to_numpy(), "cls": cls, "key": keys}).drop_duplicates("id")
    people = people.sort_values(["cls", "key"], kind="stable")
    people["pos"] = people.groupby("cls").cumcount()
    every = max(2, round(1 / test_share))
    held = set(people.loc[people["pos"] % every == every // 2, "id"])
    return pd.Series(np.where(ids.isin(held), "test", "train"), index=labels.index)


def cv_folds(labels: pd.Series, ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Stratified k-fold assignment grouped by customer (0..k-1 per row): each fold holds about the same
    share of positives, and no customer is split across folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels.to_numpy(), ids.astype(str).to_numpy())):
        out[held] = k
    return out

"""Oracle scores from the generator's ground truth: how well a model *could* do on generated data.

Only used when training is given the generator's `_truth/` folder (`--truth`), to report a model's
AUC next to the AUC of the true process on the same test rows. Never used for fitting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from propel.demo.generate import (CAMPAIGN_CHANNELS, FLOOR, HAZARD, OFFERS, N_DISCOUNTS, P_BUY, P_CART, SESSION_RATE,
                               UPLIFT_TYPES, VIEWS, activity, response_probabilities)

DAY_NS = 86_400 * 10**9
STORE_SHARE = 1.5 / 9.5  # mean share of a registered person's sessions in store (the generator's Dirichlet(5, 3, 1.5))
QUIET_DAYS = 365  # how far back a silence is weighed when inferring whether someone is still active


def _persons(truth_dir: Path) -> pd.DataFrame:
    p = pd.read_parquet(Path(truth_dir) / "persons.parquet").dropna(subset=["customer_id"]).set_index("customer_id")
    return p[~p.index.duplicated()]


class _Truth:
    """The true traits of the persons behind `rows` (NaN without ground truth) and their process."""

    def __init__(self, truth_dir: Path, rows: pd.DataFrame):
        self.p = _persons(truth_dir).reindex(rows["customer_id"].to_numpy())
        self.signup = _ns(self.p["first_seen_at"])
        self.half_life, self.loyalty = self.p["engagement_half_life_days"].to_numpy(), self.p["brand_loyalty"].to_numpy()
        price = self.p["price_sensitivity"].to_numpy()
        # P(a session has a purchase): store visits always buy; online, each viewed item may be carted and bought
        online = 1 - np.exp(-VIEWS * P_CART / (1 + price) * P_BUY * (0.7 + 0.6 * self.loyalty))
        self.buy_per_session = STORE_SHARE + (1 - STORE_SHARE) * online
        self.known = ~np.isnan(self.p["engagement"].to_numpy())

    def rates(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(engagement, sessions per day, churn hazard per day) at time t, as the generator has them."""
        decay = 0.5 ** (np.maximum(t - self.signup, 0) / DAY_NS / self.half_life)
        engagement = self.p["engagement"].to_numpy() * (FLOOR + (1 - FLOOR) * decay)
        return engagement, SESSION_RATE * engagement, HAZARD * (1 - decay) * (1.5 - self.loyalty)

    def p_active(self, start: np.ndarray, quiet_days) -> np.ndarray:
        """P(not churned yet at `start` | true traits, active on the day of the last visit, no visit in the
        `quiet_days` since): the true process applied to what can be observed, not the hidden churn time."""
        quiet = np.minimum(np.nan_to_num(np.asarray(quiet_days, dtype=float), nan=QUIET_DAYS), QUIET_DAYS)
        died, cumulative = np.zeros(len(start)), np.zeros(len(start))
        for back in range(QUIET_DAYS - 1, 0, -1):  # the silent days, oldest first
            silent = back < quiet
            _, sessions, hazard = self.rates(start - back * DAY_NS)
            died += np.where(silent, hazard * np.exp(-cumulative), 0)
            cumulative += np.where(silent, hazard + sessions, 0)
        alive = np.exp(-cumulative)
        return alive / (alive + died)

    def expected_purchases(self, start: np.ndarray, days: int) -> np.ndarray:
        """Expected purchase sessions in [start, start + days) for someone still active at start."""
        expected, cumulative_hazard = np.zeros(len(start)), np.zeros(len(start))
        for d in range(days):
            _, sessions, hazard = self.rates(start + d * DAY_NS)
            expected += sessions * np.exp(-cumulative_hazard) * self.buy_per_session
            cumulative_hazard += hazard
        return expected


def churn_scores(truth_dir: Path, rows: pd.DataFrame, horizon_days: int) -> pd.Series:
    """P(no purchase in the horizon) by the true process, from what is observable at the cutoff: the
    chance the person is still active given the true traits and how long they have been silent
    (`days_since_last_visit`), times the chance an active person makes no purchase, from the true
    engagement curve, churn hazard and purchase propensity. Not clairvoyant: neither the hidden moment
    someone churned nor the realised future is used. NaN without ground truth."""
    truth = _Truth(truth_dir, rows)
    start = _ns(rows["event_timestamp"])
    active = truth.p_active(start, rows["days_since_last_visit"])
    score = 1 - active * (1 - np.exp(-truth.expected_purchases(start, horizon_days)))
    return pd.Series(np.where(truth.known, score, np.nan), index=rows.index)


def response_scores(truth_dir: Path, rows: pd.DataFrame, window_days: int) -> pd.Series:
    """P(a purchase within the window) of each treated touch by the true process: the campaign's true
    conversion probability for an active person (uplift type, channel, offer, traits) or an organic
    purchase, both weighed by the chance the person is still active at the send (as for churn, from
    the silence before the snapshot, not the hidden churn time). NaN without ground truth."""
    truth = _Truth(truth_dir, rows)
    start = _ns(rows["event_timestamp"])
    p = truth.p
    known = truth.known & rows["campaign_channel"].isin(CAMPAIGN_CHANNELS).to_numpy()
    engagement, _, _ = truth.rates(start)
    # unknown levels are -1, clipped to 0 where an index is needed (those rows are not `known`)
    _, converts = response_probabilities(
        _codes(p["uplift_type"], UPLIFT_TYPES).clip(0), _codes(rows["campaign_channel"], CAMPAIGN_CHANNELS).clip(0),
        _codes(p["preferred_channel"], CAMPAIGN_CHANNELS), rows["offer_type"].isin(OFFERS[:N_DISCOUNTS]).to_numpy(),
        p["price_sensitivity"].to_numpy(), activity(engagement))
    snapshot = start - start % DAY_NS  # features describe the midnight before the send
    active = truth.p_active(snapshot, rows["days_since_last_visit"])
    score = active * (1 - (1 - converts) * np.exp(-truth.expected_purchases(start, window_days)))
    return pd.Series(np.where(known, score, np.nan), index=rows.index)


def _codes(values, levels) -> np.ndarray:
    return pd.Categorical(values, levels).codes


def _ns(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds (UTC); missing -> far future."""
    ts = pd.to_datetime(pd.Series(values), utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[ns]")
    return np.where(np.isnat(ts), np.iinfo(np.int64).max, ts.astype(np.int64))


def _compare(test: pd.DataFrame, model: np.ndarray, oracle: pd.Series) -> dict[str, float]:
    """Model and oracle AUC on the same test rows: those with ground truth."""
    known = oracle.notna().to_numpy()
    y = test["label"].to_numpy()[known]
    if len(np.unique(y)) < 2:
        return {}
    model_auc, oracle_auc = roc_auc_score(y, model[known]), roc_auc_score(y, oracle.to_numpy()[known])
    return {"oracle_roc_auc": float(oracle_auc), "model_roc_auc_on_truth_rows": float(model_auc),
            "share_of_oracle_auc": float(model_auc / oracle_auc)}


class Oracle:
    """The generator's ground truth, as `propel train --truth DIR` hands it to training (which never imports
    this demo package): each method answers what a task asks of it."""

    def __init__(self, truth_dir: Path):
        self.dir = Path(truth_dir)

    def churn_metrics(self, test: pd.DataFrame, model_scores: np.ndarray, *, horizon_days: int) -> dict[str, float]:
        return _compare(test, model_scores, churn_scores(self.dir, test, horizon_days))

    def response_metrics(self, test: pd.DataFrame, model_scores: np.ndarray, *, window_days: int) -> dict[str, float]:
        return _compare(test, model_scores, response_scores(self.dir, test, window_days))

    def true_uplift(self, rows: pd.DataFrame) -> np.ndarray:
        truth = pd.read_parquet(self.dir / "treatment_effects.parquet")
        truth["uplift"] = truth["p_treated"] - truth["p_control"]
        return rows[["customer_id", "campaign_id"]].merge(truth[["customer_id", "campaign_id", "uplift"]],
                                                          on=["customer_id", "campaign_id"], how="left")["uplift"].to_numpy()

    def lift_per_send(self, channel_of: pd.Series | None = None) -> pd.Series:
        """The planted mean conversion lift (p_treated - p_control) of a sent message, by campaign; by channel
        (all its campaigns' sends) when `channel_of` maps campaign ids to channels."""
        truth = pd.read_parquet(self.dir / "treatment_effects.parquet")
        sent = truth[truth["group"] == "treatment"]
        lift = sent["p_treated"] - sent["p_control"]
        key = sent["campaign_id"] if channel_of is None else sent["campaign_id"].map(channel_of)
        return lift.groupby(key).mean()

    def preferred_category(self, customer_ids) -> np.ndarray:
        """Each customer's planted preferred category (the generator draws item categories from a per-person
        preference vector; this is its largest entry); None without ground truth."""
        return _persons(self.dir)["preferred_category"].reindex(pd.Index(customer_ids)).astype(object).where(lambda s: s.notna(), None).to_numpy()

"""Oracle scores from the generator's ground truth: how well a model *could* do on generated data.

Only used when training is given the generator's `_truth/` folder (`--truth`), to report a model's
AUC next to the AUC of the true process on the same test rows. Never used for fitting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.generate import FLOOR, HAZARD, SESSION_RATE

DAY_NS = 86_400 * 10**9


def _persons(truth_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(truth_dir) / "persons.parquet").dropna(subset=["customer_id"]).set_index("customer_id")


def churn_scores(truth_dir: Path, rows: pd.DataFrame, horizon_days: int) -> pd.Series:
    """P(no purchase in the horizon) ranked by the true process, knowing only the state at the cutoff:
    someone already churned scores 1; otherwise the expected purchases over the horizon, from the true
    engagement curve, the true churn hazard integrated forward and the true purchase propensity
    (loyalty). Not clairvoyant: the realised future churn time is not used. NaN without ground truth."""
    p = _persons(truth_dir).reindex(rows["customer_id"].to_numpy())
    start = _ns(rows["event_timestamp"])
    signup, churn = _ns(p["first_seen_at"]), _ns(p["churn_at"])
    half_life, loyalty = p["engagement_half_life_days"].to_numpy(), p["brand_loyalty"].to_numpy()
    expected, cumulative_hazard = np.zeros(len(rows)), np.zeros(len(rows))
    for d in range(horizon_days):
        t = start + d * DAY_NS
        decay = 0.5 ** (np.maximum(t - signup, 0) / DAY_NS / half_life)
        engagement = p["engagement"].to_numpy() * (FLOOR + (1 - FLOOR) * decay)
        expected += SESSION_RATE * engagement * np.exp(-cumulative_hazard) * (0.7 + 0.6 * loyalty)
        cumulative_hazard += HAZARD * (1 - decay) * (1.5 - loyalty)
    score = np.where(churn <= start, 1.0, np.exp(-expected))
    return pd.Series(np.where(np.isnan(p["engagement"].to_numpy()), np.nan, score), index=rows.index)


def _ns(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds (UTC); missing -> far future."""
    ts = pd.to_datetime(pd.Series(values), utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[ns]")
    return np.where(np.isnat(ts), np.iinfo(np.int64).max, ts.astype(np.int64))


def churn_metrics(truth_dir: Path, test: pd.DataFrame, model_scores: np.ndarray, *, horizon_days: int) -> dict[str, float]:
    oracle = churn_scores(truth_dir, test, horizon_days)
    known = oracle.notna().to_numpy()
    y = test["label"].to_numpy()[known]
    return _compare(y, model_scores[known], oracle.to_numpy()[known])


def response_metrics(truth_dir: Path, test: pd.DataFrame, model_scores: np.ndarray) -> dict[str, float]:
    """Oracle = the true conversion probability of each touch (treated or control, as it happened)."""
    truth = pd.read_parquet(Path(truth_dir) / "treatment_effects.parquet")
    truth["p_true"] = np.where(truth["group"] == "treatment", truth["p_treated"], truth["p_control"])
    merged = test[["customer_id", "campaign_id", "label"]].merge(truth[["customer_id", "campaign_id", "p_true"]],
                                                                 on=["customer_id", "campaign_id"], how="left")
    known = merged["p_true"].notna().to_numpy()
    return _compare(merged["label"].to_numpy()[known], model_scores[known], merged["p_true"].to_numpy()[known])


def true_uplift(truth_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    truth = pd.read_parquet(Path(truth_dir) / "treatment_effects.parquet")
    truth["uplift"] = truth["p_treated"] - truth["p_control"]
    return rows[["customer_id", "campaign_id"]].merge(truth[["customer_id", "campaign_id", "uplift"]],
                                                      on=["customer_id", "campaign_id"], how="left")["uplift"].to_numpy()


def _compare(y: np.ndarray, model: np.ndarray, oracle: np.ndarray) -> dict[str, float]:
    if len(np.unique(y)) < 2:
        return {}
    model_auc, oracle_auc = roc_auc_score(y, model), roc_auc_score(y, oracle)
    return {"oracle_roc_auc": float(oracle_auc), "model_roc_auc_on_truth_rows": float(model_auc),
            "share_of_oracle_auc": float(model_auc / oracle_auc)}


def preferred_category(truth_dir: Path, customer_ids) -> np.ndarray:
    """Each customer's planted preferred category (the generator draws item categories from a per-person
    preference vector; this is its largest entry); None without ground truth."""
    p = _persons(truth_dir)
    p = p[~p.index.duplicated()]
    return p["preferred_category"].reindex(pd.Index(customer_ids)).astype(object).where(lambda s: s.notna(), None).to_numpy()

"""Customer lifetime value: BG/NBD (how many more purchases) x Gamma-Gamma (how much each), fitted by
maximum likelihood with scipy (Fader, Hardie & Lee 2005; Fader & Hardie 2013).

`lifetimes` implements the same models but is unmaintained, and pymc-marketing brings a whole PyMC
stack for a four-parameter fit; the log-likelihoods are a few lines each. A purchase here is a day with
an order (several orders on one day count once, as the model assumes); time is in weeks. `check()`
fits on all but the last `holdout` days and compares predicted with actual purchases in them.

BG/NBD assumes each customer buys at a constant rate until they drop out. Where purchase rates fall with
a customer's age (as in `propel generate`'s data), it over-predicts, and more so the longer the horizon
and the older the customers (see the numbers in tests/test_analytics.py); on data that follows the model
the prediction is unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

from propel.analytics.kpis import ORDERS

WEEK = 7.0


def rfm_summary(con, end: datetime) -> pd.DataFrame:
    """Per customer with a purchase before `end`: x (repeat purchase days), t_x and T in weeks since the first
    purchase day, m (mean revenue of the repeat purchase days)."""
    return con.execute(f"""
        WITH d AS (SELECT customer_id, CAST(ts AS DATE) AS day, sum(revenue) AS revenue
                   FROM ({ORDERS}) WHERE ts < ? GROUP BY 1, 2),
        f AS (SELECT customer_id, min(day) AS first FROM d GROUP BY 1)
        SELECT customer_id, count(*) - 1 AS x, datediff('day', first, max(day)) / {WEEK} AS t_x,
               datediff('day', first, CAST(? AS DATE)) / {WEEK} AS T,
               coalesce(avg(revenue) FILTER (WHERE day > first), 0) AS m
        FROM d JOIN f USING (customer_id) GROUP BY customer_id, first ORDER BY customer_id""", [end, end]).df()


def _bgnbd_ll(params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + x - 1, 1)) - (r + x) * np.log(alpha + tx), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def _gg_ll(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    p, q, v = params
    return (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
            + p * x * np.log(x) - (p * x + q) * np.log(x * m + v))


def _fit(ll, n_params: int, *data) -> np.ndarray:
    """Maximum likelihood over log-parameters (keeps them positive), bounded to e^-9..e^9 so a flat
    likelihood cannot run off to overflow."""
    result = minimize(lambda w: -np.sum(ll(np.exp(w), *data)), np.zeros(n_params), method="L-BFGS-B",
                      bounds=[(-9.0, 9.0)] * n_params)
    return np.exp(result.x)


@dataclass
class CLTVModel:
    bgnbd: np.ndarray  # r, alpha, a, b
    gamma_gamma: np.ndarray  # p, q, v

    @classmethod
    def fit(cls, summary: pd.DataFrame) -> CLTVModel:
        if len(summary) < 20 or (summary["x"] > 0).sum() < 10:
            raise ValueError(f"CLTV needs at least 20 buyers and 10 repeat buyers; found {len(summary)} and "
                             f"{int((summary['x'] > 0).sum())}")
        x, tx, T = (summary[c].to_numpy(float) for c in ("x", "t_x", "T"))
        repeat = summary[(summary["x"] > 0) & (summary["m"] > 0)]
        gg = _fit(_gg_ll, 3, repeat["x"].to_numpy(float), repeat["m"].to_numpy(float))
        return cls(_fit(_bgnbd_ll, 4, x, tx, T), gg)

    def expected_purchases(self, summary: pd.DataFrame, weeks: float) -> np.ndarray:
        """E[purchases in the next `weeks` | x, t_x, T] (BG/NBD conditional expectation)."""
        r, alpha, a, b = self.bgnbd
        x, tx, T = (summary[c].to_numpy(float) for c in ("x", "t_x", "T"))
        z = weeks / (alpha + T + weeks)
        head = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + weeks)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z))
        return head / (1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))

    def p_alive(self, summary: pd.DataFrame) -> np.ndarray:
        r, alpha, a, b = self.bgnbd
        x, tx, T = (summary[c].to_numpy(float) for c in ("x", "t_x", "T"))
        return 1 / (1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))

    def expected_value(self, summary: pd.DataFrame) -> np.ndarray:
        """E[revenue of a purchase | x, m] (Gamma-Gamma; the population mean for one-time buyers)."""
        p, q, v = self.gamma_gamma
        x, m = summary["x"].to_numpy(float), summary["m"].to_numpy(float)
        return p * (v + x * m) / (p * x + q - 1)

    def cltv(self, summary: pd.DataFrame, days: int) -> pd.DataFrame:
        n = self.expected_purchases(summary, days / WEEK)
        value = self.expected_value(summary)
        return summary.assign(expected_purchases=n, expected_value=value, p_alive=self.p_alive(summary), cltv=n * value)


@dataclass
class HoldoutCheck:
    calibration_end: str
    holdout_days: int
    customers: int
    predicted_purchases: float
    actual_purchases: int
    predicted_revenue: float
    actual_revenue: float
    correlation: float  # per customer, predicted vs actual purchases
    by_frequency: pd.DataFrame = field(repr=False)  # mean predicted and actual by calibration repeat purchases

    @property
    def ratio(self) -> float:
        return self.predicted_purchases / max(self.actual_purchases, 1)


def _end(con) -> datetime:
    return con.execute("SELECT CAST(max(ts) AS DATE) + 1 FROM events").fetchone()[0]


def check(con, holdout_days: int) -> HoldoutCheck:
    """Fit on the history before the last `holdout_days` (at most a third of it) and predict those days."""
    start, end = con.execute("SELECT CAST(min(ts) AS DATE), CAST(max(ts) AS DATE) + 1 FROM events").fetchone()
    holdout_days = int(min(holdout_days, (end - start).days // 3))
    cal_end = end - timedelta(days=holdout_days)
    summary = rfm_summary(con, cal_end)
    model = CLTVModel.fit(summary)
    actual = con.execute(f"""SELECT customer_id, count(DISTINCT CAST(ts AS DATE)) AS n, sum(revenue) AS revenue
                             FROM ({ORDERS}) WHERE ts >= ? GROUP BY 1""", [cal_end]).df().set_index("customer_id")
    actual = actual.reindex(summary["customer_id"]).fillna(0)
    predicted = model.expected_purchases(summary, holdout_days / WEEK)
    frame = pd.DataFrame({"x": np.minimum(summary["x"].to_numpy(), 5), "predicted": predicted, "actual": actual["n"].to_numpy()})
    by_freq = frame.groupby("x").agg(customers=("x", "size"), predicted=("predicted", "mean"), actual=("actual", "mean"))
    return HoldoutCheck(cal_end.isoformat(), holdout_days, len(summary), float(predicted.sum()), int(actual["n"].sum()),
                        float((predicted * model.expected_value(summary)).sum()), float(actual["revenue"].sum()),
                        float(np.corrcoef(predicted, frame["actual"])[0, 1]), by_freq.reset_index())


def estimate(con, days: int) -> tuple[CLTVModel, pd.DataFrame]:
    """Fit on all history; every buyer's expected purchases, value per purchase, P(alive) and CLTV over `days`."""
    summary = rfm_summary(con, _end(con))
    model = CLTVModel.fit(summary)
    return model, model.cltv(summary, days)


def by_acquisition_channel(con, values: pd.DataFrame) -> pd.DataFrame:
    """Buyers, mean and total CLTV and mean P(alive) by the channel of each customer's first order."""
    first = con.execute(f"SELECT customer_id, channel FROM ({ORDERS}) WHERE first_order").df()
    return (values.merge(first, on="customer_id").groupby("channel")
            .agg(customers=("customer_id", "size"), mean_cltv=("cltv", "mean"), total_cltv=("cltv", "sum"),
                 mean_p_alive=("p_alive", "mean")).sort_values("total_cltv", ascending=False))

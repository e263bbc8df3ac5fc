"""`propel attribution`: who gets credit for orders, under rule-based and data-driven models, and what it cost.

A *touch* is a campaign message sent (treatment group), or an event on a marketing channel (email, SMS,
push, social, search, display, affiliate, call centre: opens, clicks, ad clicks). A *conversion* is an
order: the purchases of one session (or a purchase without a session). Each touch belongs to the first
order of the same customer at or after it; it is part of that order's path when the order came within
`lookback_days`, else of a non-converting path: the customer's unconverted touches before that order (or
the end of the data), cut into windows of `lookback_days` from the first of them, so that non-converting
paths span no more time than converting ones (as one path, months of unanswered sends would form long
paths through every channel, and the Markov chain learns that mixing channels never converts: it then
over-credits rare channels). Touches younger than the lookback at the end of the data are left out, their
outcome is unknown. Orders without any touch are organic and credit nobody.

Models, per converting path: last touch, first touch, linear, time decay (weight 2^(-age / half-life)),
position-based (40% first, 40% last, 20% shared by the middle; 50/50 for two touches), linear over
distinct channels (`linear_distinct`: each distinct channel/campaign of the path gets an equal share, the
Shapley value of a unanimity game, which this column was once called), data-driven Shapley (`shapley`,
below), and a first-order Markov chain over all paths whose removal effects (the fall in conversion
probability when a state is removed) are normalised to shares of all converting paths. Revenue, and first
orders (new customers, for CAC), are credited the same way.

Data-driven Shapley (Shao & Li 2011; Dalessandro et al. 2012): the worth v(S) of a coalition S of channels
(campaigns) is the conversion rate of the paths, converting or not, whose distinct channels are exactly S
(0 for a coalition no path has; v(empty) = 0). A converting path with channels S is shared out by the
Shapley values of the game restricted to S (each channel's marginal contribution v(T + i) - v(T), averaged
over the orders in which S can be assembled), negative values counted as 0 and the rest normalised to the
path's one conversion. Exact (all 2^|S| subsets) for paths with up to `EXACT_PLAYERS` distinct keys;
above, Monte Carlo over `SAMPLED_ORDERS` random orders (seeded), whose largest standard error of a share
is reported (`Attribution.shapley_error`).

Only `markov_incremental` estimates what a channel causes; the others share out conversions that touched
it, including those that would have happened anyway. On generated data both Markov models rank channels
in the order of the generator's true effects at demo size with a lookback equal to its 7-day response
window; a longer lookback mixes in the next campaign and purchases that happen anyway, and at test size
the effects are within the noise (figures in docs/analytics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from propel.analytics.kpis import ORDERS
from propel.lake.tables import Lake
from propel.lake.schema import CHANNELS
from propel.config import Workspace

TOUCH_CHANNELS = tuple(c for c in CHANNELS if c not in ("web", "app", "store"))  # marketing, not shopping, channels
RULE_MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position", "linear_distinct")
PATH_MODELS = (*RULE_MODELS, "shapley")  # each converting path's credit shared out among its touches
EXACT_PLAYERS = 12  # exact Shapley values up to 2^12 coalitions per path; sampled above
SAMPLED_ORDERS = 400  # random orders per path above EXACT_PLAYERS: share errors of about 1/sqrt(400) of their spread
MODELS = (*PATH_MODELS, "markov", "markov_incremental")
LEVELS = {"channel": "channel", "campaign": "campaign"}
NO_CAMPAIGN = "(no campaign)"


def touches(con, lookback_days: int) -> pd.DataFrame:
    """Every usable touch with its path: path_id, customer_id, ts, channel, campaign, kind, converted,
    order_ts, revenue, first_order; ordered by path and time."""
    channels = ", ".join(f"'{c}'" for c in TOUCH_CHANNELS)
    lookback = f"INTERVAL {int(lookback_days)} DAY"
    return con.execute(f"""
        WITH touch AS (
            SELECT t.customer_id, t.sent_at AS ts, c.channel, t.campaign_id,
                   CASE WHEN t."group" = 'control' THEN 'holdout' ELSE 'send' END AS kind
            FROM campaign_touches t JOIN campaigns c USING (campaign_id)
            UNION ALL
            SELECT customer_id, ts, channel, campaign_id, event_type FROM events
            WHERE channel IN ({channels}) AND event_type <> 'purchase'),
        orders AS ({ORDERS}),
        matched AS (
            SELECT t.*, o.order_id, o.ts AS order_ts, o.revenue, o.first_order,
                   coalesce(o.ts - t.ts <= {lookback}, false) AS converted
            FROM touch t ASOF LEFT JOIN orders o ON t.customer_id = o.customer_id AND t.ts <= o.ts),
        windowed AS (
            SELECT *, floor(datediff('second', min(ts) OVER (PARTITION BY customer_id, order_id, converted), ts)
                            / {int(lookback_days) * 86_400}) AS slot
            FROM matched)
        SELECT CASE WHEN converted THEN customer_id || '/' || order_id
                    ELSE customer_id || '/open/' || coalesce(order_id, 'end') || '/' || CAST(slot AS INTEGER) END AS path_id,
               customer_id, ts, channel, coalesce(campaign_id, '{NO_CAMPAIGN}') AS campaign, kind, converted,
               CASE WHEN converted THEN order_ts END AS order_ts, CASE WHEN converted THEN revenue ELSE 0 END AS revenue,
               coalesce(converted AND first_order, false) AS first_order
        FROM windowed
        WHERE converted OR ts <= (SELECT max(ts) FROM events) - {lookback}
        ORDER BY path_id, ts, channel""").df()


def _coalition_rates(sets: pd.Series, converted: pd.Series) -> dict[frozenset, float]:
    """v(S): the conversion rate of the paths whose set of distinct keys is exactly S."""
    return pd.Series(converted.to_numpy(float)).groupby(sets.to_numpy()).mean().to_dict()


def _exact_shapley(players: list, v: dict) -> np.ndarray:
    """Shapley values of the game v restricted to `players`, from all 2^n coalitions (bit masks)."""
    n = len(players)
    masks = np.arange(2 ** n)
    members = (masks[:, None] >> np.arange(n)) & 1
    worth = np.array([v.get(frozenset(p for p, m in zip(players, row) if m), 0.0) for row in members])
    size = members.sum(axis=1)
    weight = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)])
    phi = np.empty(n)
    for i in range(n):
        without = masks[members[:, i] == 0]
        phi[i] = np.sum(weight[size[without]] * (worth[without | (1 << i)] - worth[without]))
    return phi


def _sampled_shapley(players: list, v: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo Shapley values over SAMPLED_ORDERS random orders, and their standard errors."""
    n = len(players)
    gains = np.empty((SAMPLED_ORDERS, n))
    for row in range(SAMPLED_ORDERS):
        order, before, coalition = rng.permutation(n), 0.0, set()
        for i in order:
            coalition.add(players[i])
            after = v.get(frozenset(coalition), 0.0)
            gains[row, i], before = after - before, after
    return gains.mean(axis=0), gains.std(axis=0, ddof=1) / np.sqrt(SAMPLED_ORDERS)


def shapley_credits(t: pd.DataFrame, level: str, seed: int = 0) -> tuple[pd.Series, float]:
    """Per-touch data-driven Shapley credit (each converting path's credits sum to 1), and the largest standard
    error of a sampled path share (0 when every path was exact)."""
    key = t[LEVELS[level]].astype(str)
    sets = key.groupby(t["path_id"], sort=False).agg(frozenset)
    outcome = t.groupby("path_id", sort=False)["converted"].first()
    v = _coalition_rates(sets, outcome.loc[sets.index])
    rng, shares, error = np.random.default_rng(seed), {}, 0.0
    for coalition in sorted(set(sets[outcome.loc[sets.index]]), key=sorted):
        players = sorted(coalition)
        if len(players) <= EXACT_PLAYERS:
            phi, se = _exact_shapley(players, v), np.zeros(len(players))
        else:
            phi, se = _sampled_shapley(players, v, rng)
        positive = np.clip(phi, 0, None)
        total = positive.sum()
        share = positive / total if total > 0 else np.full(len(players), 1 / len(players))
        if total > 0:
            error = max(error, float((se / total).max()))
        shares.update({(coalition, p): s for p, s in zip(players, share)})
    path_set = t["path_id"].map(sets)
    same_key = t.assign(_k=key).groupby(["path_id", "_k"])["ts"].transform("size").to_numpy()
    credit = [shares.get((c, k), 0.0) for c, k in zip(path_set, key)] / same_key
    return pd.Series(credit * t["converted"].to_numpy(), index=t.index), error


def rule_credits(t: pd.DataFrame, level: str, half_life_days: float) -> pd.DataFrame:
    """Per-touch credit (each converting path's credits sum to 1) of every rule-based model at `level`."""
    path = t["path_id"]
    g = t.groupby(path, sort=False)
    n, pos = g["ts"].transform("size").to_numpy(), g.cumcount().to_numpy()
    first, last = pos == 0, pos == n - 1
    age = (t["order_ts"] - t["ts"]).dt.total_seconds().to_numpy() / 86_400
    decay = pd.Series(0.5 ** (np.nan_to_num(age) / half_life_days), index=t.index)
    key = t[LEVELS[level]]
    distinct = t.assign(_k=key).groupby("path_id")["_k"].transform("nunique").to_numpy()
    same_key = t.assign(_k=key).groupby(["path_id", "_k"])["ts"].transform("size").to_numpy()
    credit = pd.DataFrame({
        "last_touch": last * 1.0, "first_touch": first * 1.0, "linear": 1.0 / n,
        "time_decay": (decay / decay.groupby(path).transform("sum")).to_numpy(),
        "position": np.select([n == 1, n == 2, first | last], [1.0, 0.5, 0.4], 0.2 / np.maximum(n - 2, 1)),
        "linear_distinct": 1.0 / (distinct * same_key),
    }, index=t.index)
    return credit.mul(t["converted"].to_numpy(), axis=0)


REWARDS = ("conversions", "revenue", "new_customers")  # what a converting path is worth, for every model


def _chain(t: pd.DataFrame, keys: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """States (0 = start), transition probabilities between them and each state's expected immediate reward
    (conversion, revenue, first order) when its path ends there; plus the number of paths."""
    states = sorted(keys.unique())
    index = pd.Series(np.arange(1, len(states) + 1), index=states)
    n = len(states) + 1
    code = keys.map(index).to_numpy()
    new_path = t["path_id"].ne(t["path_id"].shift()).to_numpy()
    src = np.where(new_path, 0, np.roll(code, 1))
    last = np.r_[new_path[1:], True]
    counts, rewards = np.zeros((n, n)), np.zeros((n, len(REWARDS)))
    np.add.at(counts, (src, code), 1.0)
    ends = t.loc[last]
    np.add.at(rewards, code[last], ends[["converted", "revenue", "first_order"]].to_numpy(float))
    total = counts.sum(axis=1) + np.bincount(code[last], minlength=n)
    return states, counts / np.maximum(total, 1)[:, None], rewards / np.maximum(total, 1)[:, None], int(last.sum())


def _value(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Expected reward of a path from the start state (absorbing-chain value: v = r + Q v)."""
    return np.linalg.solve(np.eye(len(q)) - q, r)[0]


def markov(t: pd.DataFrame, level: str) -> pd.DataFrame:
    """First-order Markov chain credit by key: `markov` (classic removal effect: a removed state ends its
    paths unconverted; effects normalised to shares of the converting paths' totals) and
    `markov_incremental` (holdout removal: a removed state behaves like its campaign control group, the
    randomised counterfactual; the fall in expected reward times the number of paths, not normalised;
    NaN without a control group)."""
    column = LEVELS[level]
    real = t[t["kind"] != "holdout"]
    states, q, r, _ = _chain(real, real[column].astype(str))
    base = _value(q, r)
    effect = []
    for i in range(1, len(states) + 1):
        qq, rr = q.copy(), r.copy()
        qq[i], rr[i] = 0, 0
        effect.append(1 - _value(qq, rr) / np.where(base > 0, base, np.nan))
    effect = np.nan_to_num(np.array(effect))
    share = effect / np.where(effect.sum(axis=0) > 0, effect.sum(axis=0), 1)
    totals = real.drop_duplicates("path_id")[["converted", "revenue", "first_order"]].to_numpy(float).sum(axis=0)
    classic = pd.DataFrame(share * totals, index=states, columns=list(REWARDS))

    keys = np.where(t["kind"] == "holdout", "holdout:" + t[column].astype(str), t[column].astype(str))
    states, q, r, paths = _chain(t, pd.Series(keys, index=t.index))
    base, index = _value(q, r), {s: i + 1 for i, s in enumerate(states)}
    incremental = {}
    for key in classic.index:
        held = index.get(f"holdout:{key}")
        if held is None:
            incremental[key] = [np.nan] * len(REWARDS)
            continue
        qq, rr, i = q.copy(), r.copy(), index[key]
        qq[i], rr[i] = q[held], r[held]
        incremental[key] = (base - _value(qq, rr)) * paths
    incremental = pd.DataFrame.from_dict(incremental, orient="index", columns=list(REWARDS))
    return pd.concat({"markov": classic, "markov_incremental": incremental}, names=["model", "key"]).reset_index()


@dataclass
class Attribution:
    """Attributed conversions, revenue and new customers per model and key, with costs and sends."""

    table: pd.DataFrame  # model, level, key, conversions, revenue, new_customers, cost, sends, roi, cac
    paths: int
    converting_paths: int
    organic_orders: int
    lookback_days: int
    half_life_days: float
    shapley_error: dict[str, float]  # per level: largest standard error of a sampled Shapley share (0: all exact)
    credits: pd.DataFrame  # per touch of a converting path: customer_id, order_ts, channel, revenue, first_order and
    #                        each path model's channel-level credit (the report's drill-down re-adds them per filter)

    def side_by_side(self, level: str = "channel", measure: str = "conversions") -> pd.DataFrame:
        """One row per channel (campaign), one column per model, plus cost and sends."""
        t = self.table[self.table["level"] == level]
        wide = t.pivot(index="key", columns="model", values=measure)[list(MODELS)]
        extra = t.drop_duplicates("key").set_index("key")[["cost", "sends"]]
        return wide.join(extra).sort_values("markov", ascending=False)

    def money(self, level: str = "channel") -> pd.DataFrame:
        """Cost, and revenue and ROI under the classic and the incremental Markov model, CAC under the classic."""
        t = self.table[self.table["level"] == level].set_index(["model", "key"])
        out = pd.DataFrame({"cost": t.loc["markov", "cost"], "revenue_markov": t.loc["markov", "revenue"],
                            "roi_markov": t.loc["markov", "roi"], "cac_markov": t.loc["markov", "cac"],
                            "revenue_incremental": t.loc["markov_incremental", "revenue"],
                            "roi_incremental": t.loc["markov_incremental", "roi"]})
        return out.loc[self.side_by_side(level).index]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(folder / "attribution.csv", index=False)
        return folder / "attribution.csv"


def attribute(ws: Workspace, lookback_days: int | None = None, half_life_days: float | None = None) -> Attribution:
    """Run every model at channel and campaign level over the lake."""
    cfg = ws.settings().analytics
    lookback_days = lookback_days or cfg.lookback_days
    half_life_days = half_life_days or cfg.half_life_days
    con = Lake(ws).connect()
    t = touches(con, lookback_days)
    if t.empty:
        raise ValueError(f"{Lake(ws).root}: no marketing touch to attribute (campaign_touches, or events on "
                         f"{', '.join(TOUCH_CHANNELS)}) older than the {lookback_days}-day lookback")
    costs = con.execute("SELECT campaign_id, channel, cost FROM campaigns").df()
    sends = con.execute("""SELECT t.campaign_id, c.channel FROM campaign_touches t JOIN campaigns c USING (campaign_id)
                           WHERE t."group" = 'treatment'""").df()
    orders = con.execute(f"SELECT count(*) FROM ({ORDERS})").fetchone()[0]
    real = t[t["kind"] != "holdout"]
    frames, errors = [], {}
    for level, column in LEVELS.items():
        credit = rule_credits(real, level, half_life_days)
        credit["shapley"], errors[level] = shapley_credits(real, level, ws.settings().train.seed)
        if level == "channel":
            converted = real["converted"].to_numpy()
            per_touch = real.loc[converted, ["customer_id", "order_ts", "channel", "revenue", "first_order"]].join(credit[converted])
        keys = real[column]
        for model in PATH_MODELS:
            w = credit[model]
            frames.append(pd.DataFrame({
                "model": model, "level": level, "conversions": w.groupby(keys).sum(),
                "revenue": (w * real["revenue"]).groupby(keys).sum(),
                "new_customers": (w * real["first_order"]).groupby(keys).sum()}).rename_axis("key").reset_index())
        frames.append(markov(t, level).assign(level=level))
    table = pd.concat(frames, ignore_index=True)
    cost = pd.concat([costs.groupby("channel")["cost"].sum(), costs.set_index("campaign_id")["cost"]])
    n_sends = pd.concat([sends.groupby("channel").size(), sends.groupby("campaign_id").size()])
    table["cost"] = table["key"].map(cost).fillna(0.0)
    table["sends"] = table["key"].map(n_sends).fillna(0).astype(int)
    paid = table["cost"] > 0
    table["roi"] = np.where(paid, (table["revenue"] - table["cost"]) / table["cost"].where(paid), np.nan)
    table["cac"] = np.where(paid & (table["new_customers"] > 0), table["cost"] / table["new_customers"].where(table["new_customers"] > 0), np.nan)
    converting = int(real.loc[real["converted"], "path_id"].nunique())
    return Attribution(table, int(real["path_id"].nunique()), converting, int(orders - converting), lookback_days,
                       half_life_days, errors, per_touch)


def rank_correlation(result: Attribution, true_effect: pd.Series, level: str = "channel") -> pd.Series:
    """Spearman correlation, per model, between the conversions it credits per send and the true effect per
    send of each channel (campaign) that has both (on generated data: `propel.demo.oracle.Oracle`)."""
    side = result.side_by_side(level)
    keys = side.index[(side["sends"] > 0) & side.index.isin(true_effect.index)]
    per_send = side.loc[keys, list(MODELS)].div(side.loc[keys, "sends"], axis=0)
    truth = true_effect.loc[keys]
    return pd.Series({m: per_send[m].corr(truth, method="spearman") for m in MODELS}, name="spearman")

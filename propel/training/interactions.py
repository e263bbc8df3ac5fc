"""Implicit feedback for the recommenders: customer x item interactions from the lake's `events` view.

Each item event gets its type's weight (`[recommend].event_weights`); an optional half-life decays old
interactions toward the end of the window they belong to; `confidence()` turns summed weights into the
confidence ALS-style models fit. Customers and items get stable integer ids (sorted ids; items = the
catalogue plus anything seen in events) that travel with the model.

`holdout` picks the evaluation protocol every model shares (`[recommend].protocol`):
- `temporal`: fit on everything before a cutoff, test on each customer's interactions in the following
  `test_days` window - the honest protocol when many customers are active in any window;
- `leave_last_out`: per customer, the latest `holdout_share` of their distinct items (by first
  interaction, at least one, never all) are held out and models fit on everything else - the protocol
  for sparse, long logs where only a handful of customers are active in any month;
- `auto` (default): temporal when its window holds at least RELIABLE_TEST_CUSTOMERS test customers,
  else leave-last-out.
Either way only items new to the customer count as hits unless repeat interactions are configured as
relevant, and customers with little or no history before their holdout form the cold-start subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from propel.config import RecommendSettings

DAY = 86_400
MIN_TEST_CUSTOMERS = 20  # fewer test customers cannot rank models at all
RELIABLE_TEST_CUSTOMERS = 100  # auto protocol: a temporal window with fewer test customers ranks models by noise


@dataclass
class Histories:
    """What a model needs to know about some customers: summed (decayed) weights per item, and for
    sequence models the last items in time order (item index + 1, left-padded with 0)."""

    weights: sp.csr_matrix
    seq: np.ndarray | None = None

    def __len__(self) -> int:
        return self.weights.shape[0]


@dataclass
class Interactions:
    """Weighted item events over fixed id maps, sorted by customer then time (CSR-like by customer)."""

    n_items: int
    indptr: np.ndarray  # events of customer u are [indptr[u], indptr[u + 1])
    item: np.ndarray  # int32 item index per event
    weight: np.ndarray  # float32 event weight (type weight x decay)
    purchase: np.ndarray  # bool: the event is a purchase
    ts: np.ndarray  # epoch seconds

    @property
    def n_customers(self) -> int:
        return len(self.indptr) - 1

    def select(self, mask: np.ndarray) -> Interactions:
        """The events where `mask` holds (same customers and items)."""
        user = np.repeat(np.arange(self.n_customers), np.diff(self.indptr))[mask]
        indptr = np.r_[0, np.cumsum(np.bincount(user, minlength=self.n_customers))]
        return Interactions(self.n_items, indptr, self.item[mask], self.weight[mask], self.purchase[mask], self.ts[mask])

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """customers x items, summed weights."""
        m = sp.csr_matrix((self.weight, self.item, self.indptr), shape=(self.n_customers, self.n_items), copy=True)
        m.sum_duplicates()  # sorts in place: the copy keeps the events in time order
        return m

    @cached_property
    def purchased(self) -> sp.csr_matrix:
        """customers x items, 1 where the customer bought the item."""
        rows = np.repeat(np.arange(self.n_customers), np.diff(self.indptr))[self.purchase]
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, self.item[self.purchase])),
                          shape=(self.n_customers, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1
        return m

    def items_per_customer(self) -> np.ndarray:
        return np.diff(self.matrix.indptr)

    def sequences(self, rows: np.ndarray, length: int) -> np.ndarray:
        """Each row's last `length` items, oldest first, consecutive repeats collapsed (a view, a cart
        and a purchase of one item are one step); item index + 1, left-padded with 0."""
        user = np.repeat(np.arange(self.n_customers), np.diff(self.indptr))
        keep = np.r_[True, (self.item[1:] != self.item[:-1]) | (user[1:] != user[:-1])]
        indptr = np.r_[0, np.cumsum(np.bincount(user[keep], minlength=self.n_customers))]
        items = self.item[keep]
        rows = np.asarray(rows)
        ends = indptr[rows + 1]
        n = np.minimum(ends - indptr[rows], length)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        out = np.zeros((len(rows), length), np.int32)
        out[np.repeat(np.arange(len(rows)), n), length - np.repeat(n, n) + offset] = items[np.repeat(ends - n, n) + offset] + 1
        return out

    def histories(self, rows: np.ndarray | None = None, seq_len: int = 0) -> Histories:
        rows = np.arange(self.n_customers) if rows is None else np.asarray(rows)
        return Histories(self.matrix[rows], self.sequences(rows, seq_len) if seq_len else None)


@dataclass
class Events:
    """Every weighted item event of the lake, sorted by customer then time, with the id maps and the
    catalogue (category, price, in_stock per item index)."""

    customers: np.ndarray  # customer index -> customer_id
    items: np.ndarray  # item index -> item_id
    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray  # the event type's weight, undecayed
    ts: np.ndarray  # epoch seconds
    purchase: np.ndarray
    relevant: np.ndarray  # the event type counts as a hit in the test window
    catalog: pd.DataFrame

    @property
    def end(self) -> int:
        """Midnight after the newest event (epoch seconds): windows end on day boundaries."""
        return (int(self.ts.max()) // DAY + 1) * DAY if len(self.ts) else 0

    def window(self, start: int | None, end: int, half_life_days: float = 0.0) -> Interactions:
        """Events in [start, end) over all customers; with a half-life, weights decay toward `end`."""
        mask = (self.ts < end) if start is None else (self.ts >= start) & (self.ts < end)
        return self.interactions(mask, end, half_life_days)

    def interactions(self, mask: np.ndarray, end: int, half_life_days: float = 0.0) -> Interactions:
        """The events where `mask` holds, over all customers; with a half-life, weights decay toward `end`."""
        weight = self.weight[mask]
        if half_life_days > 0:
            weight = weight * np.power(0.5, (end - self.ts[mask]) / DAY / half_life_days).astype(np.float32)
        counts = np.bincount(self.user[mask], minlength=len(self.customers))
        return Interactions(len(self.items), np.r_[0, np.cumsum(counts)], self.item[mask], weight.astype(np.float32),
                            self.purchase[mask], self.ts[mask])

    def subset(self, mask: np.ndarray) -> Events:
        """The events where `mask` holds, with the same id maps and catalogue."""
        return Events(self.customers, self.items, self.user[mask], self.item[mask], self.weight[mask], self.ts[mask],
                      self.purchase[mask], self.relevant[mask], self.catalog)


def load_events(con: duckdb.DuckDBPyConnection, cfg: RecommendSettings) -> Events:
    """Weighted item events from the `events` view (DuckDB does the weighting, id mapping and sort)."""
    weighted = {k: float(v) for k, v in cfg.event_weights.items() if v > 0}
    if not weighted:
        raise ValueError("recommend.event_weights gives no event type a positive weight")
    types = ", ".join(f"'{t}'" for t in weighted)  # validated against the contract's event types
    case = " ".join(f"WHEN '{t}' THEN {w}" for t, w in weighted.items())
    relevant = ", ".join(f"'{t}'" for t in cfg.relevant_events) or "NULL"
    con.execute(f"CREATE OR REPLACE TEMP TABLE rec_events AS SELECT customer_id, item_id, ts, event_type "
                f"FROM events WHERE item_id IS NOT NULL AND customer_id IS NOT NULL AND event_type IN ({types})")
    con.execute("CREATE OR REPLACE TEMP TABLE rec_items AS SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::INTEGER AS i "
                "FROM (SELECT item_id FROM items WHERE item_id IS NOT NULL UNION SELECT item_id FROM rec_events)")
    con.execute("CREATE OR REPLACE TEMP TABLE rec_customers AS SELECT customer_id, "
                "(row_number() OVER (ORDER BY customer_id) - 1)::INTEGER AS u FROM (SELECT DISTINCT customer_id FROM rec_events)")
    ev = con.execute(f"""
        SELECT c.u, i.i, CAST(CASE e.event_type {case} END AS FLOAT) AS w, epoch(e.ts)::BIGINT AS ts,
               e.event_type = 'purchase' AS purchase, e.event_type IN ({relevant}) AS relevant
        FROM rec_events e JOIN rec_customers c USING (customer_id) JOIN rec_items i USING (item_id)
        ORDER BY c.u, ts, i.i""").fetchnumpy()
    columns = {r[0] for r in con.execute("DESCRIBE items").fetchall()}
    in_stock = "coalesce(TRY_CAST(t.in_stock AS BOOLEAN), true)" if "in_stock" in columns else "true"
    catalog = con.execute(f"""
        SELECT i.item_id, t.category, TRY_CAST(t.price AS DOUBLE) AS price, {in_stock} AS in_stock
        FROM rec_items i LEFT JOIN items t USING (item_id) ORDER BY i.i""").df()
    customers = con.execute("SELECT customer_id FROM rec_customers ORDER BY u").fetchnumpy()["customer_id"]
    return Events(np.asarray(customers, dtype=object), catalog["item_id"].to_numpy(dtype=object),
                  ev["u"].astype(np.int32), ev["i"].astype(np.int32), ev["w"].astype(np.float32),
                  ev["ts"].astype(np.int64), ev["purchase"].astype(bool), ev["relevant"].astype(bool), catalog)


def confidence(weights: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Confidence of summed weights: `log` = log1p (a hundred views are not a hundred times one), or as is."""
    if kind == "linear":
        return weights.astype(np.float32)
    out = weights.astype(np.float32, copy=True)
    out.data = np.log1p(out.data)
    return out


@dataclass
class Split:
    """One holdout (see the module docstring). Rows of `relevant`/`seen` follow `test_users`."""

    protocol: str  # "temporal" or "leave_last_out"
    train: Interactions
    cutoff: int  # epoch seconds; temporal: train < cutoff <= test < end; leave-last-out: = end (cuts are per customer)
    end: int
    test_users: np.ndarray  # customer indices evaluated (at least one relevant item)
    relevant: sp.csr_matrix  # test_users x items: hits
    seen: sp.csr_matrix  # test_users x items: excluded from their recommendations (history, unless repeats count)
    cold: np.ndarray  # bool per test user: at most cold_start_max_items distinct items before their holdout
    known_items: np.ndarray  # bool per item: has training interactions (what a model can rank)
    popularity: np.ndarray  # float32 per item: the popularity baseline/fallback as of the cutoff
    popular_days: int | None  # the popularity window (None: all training interactions)

    def histories(self, seq_len: int = 0) -> Histories:
        return self.train.histories(self.test_users, seq_len)


def popularity(train: Interactions, events: Events, cutoff: int, days: int | None) -> np.ndarray:
    """Customers per item in the last `days` before the cutoff, all-time counts (scaled below one) breaking
    ties; with `days` None, customers per item over all of `train`."""
    total = (train.matrix > 0).sum(axis=0).A1.astype(np.float64)
    if days is None:
        return total.astype(np.float32)
    recent = events.window(cutoff - days * DAY, cutoff)
    bought = (recent.matrix > 0).sum(axis=0).A1.astype(np.float64)
    return (bought + total / (total.max() + 1)).astype(np.float32)


def _split(protocol: str, events: Events, train: Interactions, test: np.ndarray, cutoff: int, end: int,
           popular_days: int | None, cfg: RecommendSettings, seed: int) -> Split:
    """The split that fits on `train` and tests on the relevant events where `test` holds."""
    test = test & events.relevant
    rel = sp.csr_matrix((np.ones(test.sum(), np.float32), (events.user[test], events.item[test])),
                        shape=(len(events.customers), len(events.items)))
    rel.sum_duplicates()
    rel.data[:] = 1
    history = train.matrix.copy()
    history.data[:] = 1
    if not cfg.repeat_relevant:
        rel = rel - rel.multiply(history)
        rel.eliminate_zeros()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    if len(users) > cfg.eval_customers:
        users = np.sort(np.random.default_rng(seed).choice(users, cfg.eval_customers, replace=False))
    seen = sp.csr_matrix(history.shape, dtype=np.float32) if cfg.repeat_relevant else history
    n_before = train.items_per_customer()[users]
    return Split(protocol, train, cutoff, end, users, rel[users], seen[users], n_before <= cfg.cold_start_max_items,
                 np.diff(train.matrix.tocsc().indptr) > 0, popularity(train, events, cutoff, popular_days), popular_days)


def temporal_split(events: Events, cfg: RecommendSettings, end: int | None = None, seed: int = 0) -> Split:
    """Train on events before `end - test_days`, test on the `test_days` after (at most eval_customers)."""
    end = end or events.end
    cutoff = end - cfg.test_days * DAY
    train = events.window(None, cutoff, cfg.half_life_days)
    return _split("temporal", events, train, (events.ts >= cutoff) & (events.ts < end), cutoff, end, cfg.popular_days,
                  cfg, seed)


def latest_items(user: np.ndarray, item: np.ndarray, n_customers: int, n_items: int, share: float) -> np.ndarray:
    """Bool per event (events sorted by customer, then time): the event is part of its customer's latest
    `share` of distinct items, i.e. at or after the first interaction with the earliest of those items
    (later repeats of older items included). At least one item, never all: a one-item customer keeps it."""
    _, first = np.unique(user.astype(np.int64) * n_items + item, return_index=True)
    first = np.sort(first)  # each (customer, item)'s first event, in event order
    owner = user[first]
    n = np.bincount(owner, minlength=n_customers)
    held = np.where(n >= 2, np.clip(np.ceil(share * n - 1e-9), 1, n - 1), 0).astype(np.int64)
    rank = np.arange(len(first)) - np.r_[0, np.cumsum(n)[:-1]][owner]  # order of first contact per customer
    starts = rank == (n - held)[owner]  # the first held-out item's first event (never, when nothing is held)
    cut = np.full(n_customers, len(user), np.int64)
    cut[owner[starts]] = first[starts]
    return np.arange(len(user)) >= cut[user]


def leave_last_out(events: Events, cfg: RecommendSettings, seed: int = 0) -> Split:
    """Per customer, test on their latest `holdout_share` of distinct items and train on everything else
    (weights decay toward the end of the data); popularity over all training interactions, since a
    recent window of a sparse log holds only a handful of customers."""
    test = latest_items(events.user, events.item, len(events.customers), len(events.items), cfg.holdout_share)
    return _split("leave_last_out", events, events.interactions(~test, events.end, cfg.half_life_days), test,
                  events.end, events.end, None, cfg, seed)


def customers_with_items(events: Events, n: int) -> int:
    """Customers with at least `n` distinct items."""
    pairs = np.unique(events.user.astype(np.int64) * len(events.items) + events.item)
    return int((np.bincount(pairs // len(events.items)) >= n).sum())


def holdout(events: Events, cfg: RecommendSettings, seed: int = 0) -> tuple[Split, str]:
    """The split of `recommend.protocol` and why: `auto` keeps the temporal holdout when its window has at
    least RELIABLE_TEST_CUSTOMERS test customers, and otherwise holds out each customer's latest items."""
    if cfg.protocol == "leave_last_out":
        return leave_last_out(events, cfg, seed), "recommend.protocol = leave_last_out"
    split = temporal_split(events, cfg, seed=seed)
    window = f"{len(split.test_users):,} customers have new items in the last {cfg.test_days} days"
    if cfg.protocol == "temporal":
        return split, "recommend.protocol = temporal"
    if len(split.test_users) >= RELIABLE_TEST_CUSTOMERS:
        return split, f"auto: {window}"
    return leave_last_out(events, cfg, seed), f"auto: only {window} (fewer than {RELIABLE_TEST_CUSTOMERS})"


def validation_split(events: Events, split: Split, cfg: RecommendSettings, seed: int = 0) -> Split:
    """The split's protocol one step earlier, inside its training data (for tuning): the window before
    the test, or each customer's latest items of what they have left to train on."""
    if split.protocol == "temporal":
        return temporal_split(events, cfg, end=split.cutoff, seed=seed)
    test = latest_items(events.user, events.item, len(events.customers), len(events.items), cfg.holdout_share)
    return leave_last_out(events.subset(~test), cfg, seed)

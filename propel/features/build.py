"""`propel features build`: point-in-time feature snapshots from the lake, with DuckDB.

Events are first reduced to small per-customer (and per-item) *daily* tables; each snapshot at
cutoff T (a midnight, UTC) then aggregates only days strictly before T, so a snapshot never sees an
event at or after its own timestamp. All cutoffs are computed in one pass per batch of customers, from
cumulative sums over the daily tables (`_Changes`). Cutoffs are every `every_days` days back from the "latest"
snapshot, which is the midnight after the newest event. Output (Parquet, one file per cutoff holding only
the entities whose stored values changed since their previous row, or that are new):

  data/features/customer_features/<date>.parquet   customer_id, event_timestamp, stored customer features
  data/features/item_features/<date>.parquet       item_id, event_timestamp, stored item features
  data/features/customer_profile.parquet           CRM attributes (timestamp = signup), see below
  data/features/catalog.json                       cutoffs, CRM columns and types, the lake load used

Features that move with the clock alone (days since the last purchase, tenure) are stored as the day they
count from, so a customer's row does not change just because a week passed. Read the tables only through
`propel.features.asof` ("the features as of T": newest row per entity, clock features counted from T).

All SQL is plain aggregate, join and window SQL over Parquet; Spark runs it too (propel.features.spark).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propel.features.definitions import (CUSTOMER_FEATURES, FEATURE_CHANNELS, ITEM_FEATURES, Feature, clock_features,
                                        stored_features)
from propel.lake.tables import Busy, Lake, crash_point, exclusive
from propel.lake.schema import TABLES, pii_kind
from propel.config import Workspace
from propel.progress import steps

_DTYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR"}
LAYOUT = "changes"  # the catalog's name for the feature tables' layout: rows only when values change (asof.py reads it)

# The per-day counts of `_DAILY` (a count of one day fits an INTEGER: half the memory of a BIGINT)
_DAY_COUNTS = {f"n_{c}": f"channel = '{c}'" for c in FEATURE_CHANNELS} | {
    "n_views": "event_type = 'product_view'", "n_carts": "event_type = 'add_to_cart'",
    "n_purchases": "event_type = 'purchase'", "n_email_opens": "event_type = 'email_open'",
    "n_email_clicks": "event_type = 'email_click'", "n_sms_clicks": "event_type = 'sms_click'",
    "n_campaign_purchases": "event_type = 'purchase' AND campaign_id IS NOT NULL"}
# Per customer and day (`first_ts` gives `since`)
_DAILY = f"""
    SELECT customer_id, CAST(ts AS DATE) AS day, min(ts) AS first_ts, CAST(count(*) AS INTEGER) AS n_events,
      {', '.join(f'CAST(count(*) FILTER (WHERE {cond}) AS INTEGER) AS {c}' for c, cond in _DAY_COUNTS.items())},
      coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
      CAST(count(DISTINCT session_id) AS INTEGER) AS n_sessions
    FROM events GROUP BY ALL"""
# Per person, day and item (numbers `pid`, `iid`: integer keys group and join faster than the ids).
_ITEM_DAY = """
    SELECT p.pid, CAST(ts AS DATE) AS day, g.iid,
      CAST(count(*) FILTER (WHERE event_type = 'purchase') AS INTEGER) AS n_bought,
      coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
      CAST(count(*) FILTER (WHERE event_type IN ('product_view', 'add_to_cart')) AS INTEGER) AS n_viewed,
      CAST(count(*) FILTER (WHERE event_type = 'product_view') AS INTEGER) AS n_views,
      sum(revenue / nullif(quantity, 0)) FILTER (WHERE event_type = 'purchase') AS unit_prices
    FROM events JOIN people p USING (customer_id) JOIN goods g USING (item_id) GROUP BY ALL"""
# The daily sources features aggregate (with `day < T`), per person (`pid`) or item (`iid`), in that order: a batch
# of people is a range of numbers, and DuckDB skips the rest of a table sorted by them. Only people and items
# known get rows.
_SOURCES = {
    "daily": "SELECT p.pid, d.* EXCLUDE (customer_id, first_ts) FROM daily d JOIN people p USING (customer_id)",
    "touches": """
        SELECT p.pid, CAST(t.sent_at AS DATE) AS day, CAST(count(*) AS INTEGER) AS n_touches,
          CAST(count(*) FILTER (WHERE c.channel = 'email') AS INTEGER) AS n_email_touches,
          CAST(count(*) FILTER (WHERE c.channel = 'sms') AS INTEGER) AS n_sms_touches
        FROM campaign_touches t JOIN people p USING (customer_id) LEFT JOIN campaigns c USING (campaign_id)
        WHERE t."group" = 'treatment' GROUP BY ALL""",
    "gaps": """
        SELECT pid, day, day - lag(day) OVER (PARTITION BY pid ORDER BY day) AS gap
        FROM src_daily WHERE n_purchases > 0""",
    "cat_daily": """
        SELECT pid, day, coalesce(g.category, 'unknown') AS category, sum(spend) AS spend,
          sum(n_bought) AS n_bought, sum(n_viewed) AS n_viewed,
          coalesce(sum(unit_prices / nullif(cp.avg_price, 0)), 0) AS price_ratio_sum
        FROM item_day JOIN goods g USING (iid)
        LEFT JOIN (SELECT category, avg(price) AS avg_price FROM goods GROUP BY 1) cp USING (category) GROUP BY ALL""",
    "brand_daily": """
        SELECT pid, day, g.brand, sum(n_bought) AS n_bought
        FROM item_day JOIN goods g USING (iid) WHERE n_bought > 0 AND g.brand IS NOT NULL GROUP BY ALL""",
    "item_daily": """
        SELECT iid, day, sum(n_views) AS n_views, sum(n_bought) AS n_purchases FROM item_day GROUP BY ALL""",
}
# Per-customer sources with one row per (customer, day, pair key): features over the pairs in the 365 days
# before a cutoff. `sql` turns the pairs alive at a cutoff (the table `pairs`: keys `{entity}`, the pair key,
# the pair's sums) into per-pair rows the features aggregate.
@dataclass(frozen=True)
class _Pairs:
    source: str
    key: str
    sums: tuple[str, ...]
    days: int
    sql: str


_PAIRS = {
    # score = spend, or views for someone who bought nothing in the window; total = the customer's sum of scores
    "categories": _Pairs("cat_daily", "category", ("spend", "n_viewed", "price_ratio_sum", "n_bought"), 365, """
        SELECT c.*, CASE WHEN t.spend > 0 THEN c.spend ELSE c.n_viewed END AS score,
          CASE WHEN t.spend > 0 THEN t.spend ELSE t.n_viewed END AS total
        FROM pairs c JOIN (SELECT {entity}, sum(spend) AS spend, sum(n_viewed) AS n_viewed FROM pairs
        GROUP BY {entity}) t USING ({entity})"""),
    "brands": _Pairs("brand_daily", "brand", ("n_bought",), 365, """
        SELECT {entity}, n_bought / sum(n_bought) OVER (PARTITION BY {entity}) AS brand_share FROM pairs"""),
}


@dataclass
class BuildReport:
    cutoffs: list[str]
    customer_rows: int
    item_rows: int
    profile_columns: list[str]
    seconds: float

    def summary(self) -> str:
        return (f"{len(self.cutoffs)} cutoffs {self.cutoffs[0]}..{self.cutoffs[-1]}: {self.customer_rows:,} customer rows, "
                f"{self.item_rows:,} item rows (only where values changed), {len(self.profile_columns)} CRM attributes "
                f"({self.seconds:.1f}s)")


def cutoffs(latest: date, every_days: int, count: int) -> list[date]:
    """`count` cutoffs ending at `latest`, `every_days` apart, oldest first."""
    return sorted(latest - timedelta(days=every_days * i) for i in range(count))


# The aggregate shapes a feature over a daily source may have; each becomes cumulative terms (see _Changes).
_SUM = re.compile(r"sum\((?P<x>.+?)\)(?: FILTER \(WHERE day >= T - (?P<a>\d+)(?: AND day < T - (?P<b>\d+))?\))?")
_LAST = re.compile(r"T - max\(day\)(?: FILTER \(WHERE (?P<cond>.+)\))?")
_MOMENT = re.compile(r"(?P<fn>avg|stddev_samp)\((?P<x>\w+)\)")
# Cumulative sums are exact, so a window's sum (the difference of two) leaves no residue, and 8 bytes wide:
# floats keep 6 decimals, up to 10^12 per customer.
_EXACT = {"int": "BIGINT", "float": "DECIMAL(18, 6)"}


def _millionths(decimal: str) -> str:
    """SQL of a DECIMAL(18, 6) as an integer count of millionths (multiplied in 128 bits: in 64 it could overflow)."""
    return f"CAST(CAST({decimal} AS DECIMAL(38, 6)) * 1000000 AS BIGINT)"


# A stored day: days since 1970-01-01 (an integer every store carries: Parquet, Feast, SQLite, Redis, Spark)
_EPOCH_DAY = "date_diff('day', DATE '1970-01-01', {})"
_RUNNING = "OVER (PARTITION BY {} ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"


@dataclass(frozen=True)
class _Term:
    """A cumulative column of a source: `agg` ("sum" or "max") of `expr` over its rows with day + `offset` < T
    that match `cond`. A sum over the window [T - a, T - b) is the difference of two terms, offsets b and a."""
    agg: str
    expr: str
    sql_type: str
    offset: int = 0
    cond: str = "true"

    def delta(self) -> str:
        """Its aggregate over one group of the source's rows."""
        return f"{self.agg}({self.expr})" + (f" FILTER (WHERE {self.cond})" if self.cond != "true" else "")

    def running(self, column: str, window: str) -> str:
        """Its value at each k, from the deltas in `column`: a running sum (0 before any row) or maximum."""
        if self.agg == "max":
            return f"max({column}) {window}"
        return f"CAST(coalesce(sum({column}) {window}, 0) AS {self.sql_type})"


def _terms(f: Feature) -> tuple[list[_Term], str]:
    """The cumulative terms a feature needs and its SQL over them (`{0}`, `{1}`, ... = the terms' columns)."""
    if m := _SUM.fullmatch(f.sql):
        typ = _EXACT[f.dtype]
        x = f"CAST({m['x']} AS {typ})"
        enter = _Term("sum", x, typ, int(m["b"] or 0))
        if m["a"] is None:
            return [enter], "{0}"
        return [enter, _Term("sum", x, typ, int(m["a"]))], f"CAST({{0}} - {{1}} AS {typ})"
    if m := _LAST.fullmatch(f.sql):
        return [_Term("max", "day", "DATE", cond=m["cond"] or "true")], "T - {0}"
    if m := _MOMENT.fullmatch(f.sql):
        x = m["x"]
        terms = [_Term("sum", f"CAST({x} IS NOT NULL AS BIGINT)", "BIGINT"), _Term("sum", x, "BIGINT"),
                 _Term("sum", f"{x} * {x}", "BIGINT")]
        sql = ("{1} / nullif({0}, 0)" if m["fn"] == "avg"
               else "sqrt(({2} * {0} - {1} * {1}) / nullif({0} * ({0} - 1), 0))")  # exact integers until the sqrt
        return terms, sql
    raise ValueError(f"feature {f.name}: `{f.sql}` over source {f.source} is not a shape the build keeps "
                     "cumulatively (sum(x) [FILTER (WHERE day >= T - N [AND day < T - M])], T - max(day) [FILTER "
                     "(WHERE ...)], avg(x), stddev_samp(x)); add it to propel/features/build.py or use a derived feature")


class _Changes:
    """Feature rows of one entity (customers or items) at every cutoff, only where a stored value changed.

    A feature at cutoff T aggregates days before T. Rather than aggregate a year of history for each of 52
    cutoffs, every aggregate is cumulative: a row of a daily source counts from the first cutoff after its day
    (plus a window's length, for the sum it leaves), so a source gives deltas per entity and cutoff index `k`,
    and a running sum over `k` per entity gives each cutoff's value, all cutoffs in one pass (a window's sum is
    the cumulative sum up to its start minus the one up to its end; "last day" columns are running maxima).
    Only (entity, k) with a delta get a row, and the entity's first cutoff; a hash of the stored values compared
    with the entity's previous row keeps the rows where one changed. The category and brand mixes (features over
    a set of pairs) are computed where one of the entity's pairs changed, from the pairs alive then, and carried
    forward. Aggregates, joins and window functions: Spark runs the same SQL (propel.features.spark).
    """

    def __init__(self, con, features: tuple[Feature, ...], key: str, out: str, grid: str, since: str | None,
                 cuts: list[date], every_days: int):
        """`key` joins the sources and the `grid` (one row per entity, holding `out`, the output's key); `since`:
        the grid's SQL of an entity's first moment (None: all are there from the first cutoff). Cutoffs are
        `every_days` apart."""
        self.con, self.features, self.key, self.out, self.grid, self.since = con, features, key, out, grid, since
        self.t0, self.every, self.last = cuts[0], every_days, cuts[-1]
        self.span = (self.last - self.t0).days // every_days + 2  # (key, k) as one sortable code: key * span + k
        self.stored = [f.name for f in stored_features(features)]
        self.terms: dict[tuple[str, _Term], str] = {}  # (source, term) -> its column
        self.sql: dict[str, str] = {}  # feature -> SQL over the terms' columns
        for f in features:
            if f.counts_from and not f.sql.startswith("T - "):
                raise ValueError(f"feature {f.name}: counts_from needs SQL `T - <day>`, not `{f.sql}`")
            if f.source == "derived" or f.source in _PAIRS:
                continue
            terms, sql = _terms(f)
            for t in terms:
                self.terms.setdefault((f.source, t), f"c{len(self.terms)}")
            self.sql[f.name] = sql.format(*(self.terms[(f.source, t)] for t in terms))
        self.pair_features = [f for f in features if f.source in _PAIRS]
        self._grid = None  # the grid as Arrow, once fetched

    def _k(self, day: str, offset: int) -> str:
        """SQL of the index of the first cutoff after `day` + `offset` days: where a row counts from."""
        return f"greatest(0, ({_EPOCH_DAY.format(day)} + {offset + self.every - (self.t0 - date(1970, 1, 1)).days}) // {self.every})"

    def _ks(self, day: np.ndarray, offset: int) -> np.ndarray:
        """`_k` with numpy, of days since 1970; k = span - 1 for a row counting after the last cutoff (to drop)."""
        t0 = (self.t0 - date(1970, 1, 1)).days
        return np.clip((day + offset + self.every - t0) // self.every, 0, self.span - 1)

    def _slices(self, source: str, keys: str, deltas: dict[str, tuple[str, int]], where: str) -> list[tuple[str, list[str]]]:
        """Per offset, (SQL, columns) of the deltas of `source` per (keys, k): `deltas` = column -> (aggregate,
        offset). Rows counting after the last cutoff are left out."""
        out = []
        for offset in sorted({o for _, o in deltas.values()}):
            cols = [c for c, (_, o) in deltas.items() if o == offset]
            out.append((f"SELECT {keys}, {self._k('day', offset)} AS k, "
                        f"{', '.join(f'{deltas[c][0]} AS {c}' for c in cols)} FROM src_{source} "
                        f"WHERE day < DATE '{self.last - timedelta(days=offset)}' AND {where} GROUP BY ALL", cols))
        return out

    @staticmethod
    def _union(slices: list[tuple[str, list[str]]], keys: str, columns: list[str]) -> str:
        """The slices as one relation of `keys`, k and `columns` (NULL where a slice has no such column)."""
        return " UNION ALL ".join(f"SELECT {keys}, k, {', '.join(c if c in cols else f'NULL AS {c}' for c in columns)} "
                                  f"FROM ({sql})" for sql, cols in slices)

    def _pair_deltas(self, name: str, where: str) -> str:
        """SQL of the net change of each pair's window sums per (entity, pair key, k) of pair source `name`: what
        entered the window less what left it (DECIMAL, exact; `n_rows` counts the source's rows)."""
        p, key = _PAIRS[name], self.key
        deltas = {f"{c}__{o}": ("count(*)" if c == "n_rows" else f"sum(CAST({c} AS {_EXACT['float']}))", o)
                  for c in (*p.sums, "n_rows") for o in (0, p.days)}
        slices = self._union(self._slices(p.source, f"{key}, {p.key}", deltas, where), f"{key}, {p.key}", list(deltas))
        net = ", ".join(f"CAST(coalesce(sum({c}__0), 0) - coalesce(sum({c}__{p.days}), 0) AS "
                        f"{'BIGINT' if c == 'n_rows' else _EXACT['float']}) AS {c}" for c in (*p.sums, "n_rows"))
        return f"SELECT {key}, {p.key}, k, {net} FROM ({slices}) GROUP BY {key}, {p.key}, k"

    def _pair_features(self, name: str, alive: str, changes: str) -> str:
        """SQL of the features over pair source `name` at each (entity, k) of `changes`, from `alive` (the pairs
        alive there: entity, k, pair key, the pair's window sums as DOUBLE); defaults where none is."""
        p, entity = _PAIRS[name], f"{self.key}, k"
        feats = [f for f in self.pair_features if f.source == name]
        pairs = p.sql.format(entity=entity).replace("FROM pairs", f"FROM {alive}")
        computed = f"SELECT {entity}, {', '.join(f'{f.sql} AS {f.name}' for f in feats)} FROM ({pairs}) GROUP BY {entity}"
        # carried forward to later rows, a NULL would let an older value through: every change gets a value
        values = ", ".join(f"CAST(coalesce(v.{f.name}, {f.default}) AS {_DTYPES[f.dtype]}) AS p_{f.name}" for f in feats)
        return f"SELECT {entity}, {values} FROM {changes} LEFT JOIN ({computed}) v USING ({entity})"

    def _pairs(self, name: str, where: str) -> None:
        """Creates `pf_<name>`: the features over pair source `name` at each (entity, k) where one of the entity's
        pairs entered or left the window, from the pairs alive then (a pair's cumulative sums hold until its next
        change), with window functions (Spark's way; `_pairs_arrow` on DuckDB)."""
        p, key = _PAIRS[name], self.key
        w = _RUNNING.format(f"{key}, {p.key}")
        running = ", ".join(f"CAST(sum({c}) {w} AS {'BIGINT' if c == 'n_rows' else 'DOUBLE'}) AS {c}"
                            for c in (*p.sums, "n_rows"))
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE pair_states AS SELECT {key}, {p.key}, k, lead(k) OVER (PARTITION BY "
            f"{key}, {p.key} ORDER BY k) AS k_next, {running} FROM ({self._pair_deltas(name, where)})")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE pair_changes AS SELECT DISTINCT {key}, k FROM pair_states")
        alive = (f"SELECT c.{key}, c.k, s.{p.key}, {', '.join(f's.{c}' for c in p.sums)} FROM pair_changes c "
                 f"JOIN pair_states s ON s.{key} = c.{key} AND s.k <= c.k AND (s.k_next IS NULL OR c.k < s.k_next) "
                 "WHERE s.n_rows > 0")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE pf_{name} AS {self._pair_features(name, f'({alive})', 'pair_changes')}")

    def _pairs_arrow(self, name: str, where: str):
        """`pf_<name>`'s rows as Arrow (code = key * span + k, the features), the pairs' running sums and the pairs
        alive at each change found with numpy (DuckDB's window operator and range join took twice the CPU)."""
        p, key, span, exact = _PAIRS[name], self.key, self.span, _EXACT["float"]
        raw = self.con.sql(f"SELECT {key} AS key, {_EPOCH_DAY.format('day')} AS day, {p.key}, " + ", ".join(
            f"{_millionths(f'coalesce(CAST({c} AS {exact}), 0)')} AS {c}" for c in p.sums) +
            f" FROM src_{p.source} WHERE day < DATE '{self.last}' AND {where}").to_arrow_table().combine_chunks()
        day = raw["day"].to_numpy()
        # pairs numbered in key order, not as the rows come: the mixes' SQL then sums a customer's pairs in one order
        names = pc.unique(raw[p.key]).drop_null()
        names = names.take(pc.sort_indices(names))
        n_pairs = len(names) + 1  # the last for a NULL key
        pair = (raw["key"].to_numpy() * n_pairs + pc.index_in(raw[p.key], value_set=names).fill_null(len(names))
                .to_numpy()) * span
        # a row enters its pair's sums at the first cutoff after its day and leaves them `p.days` later; summed per
        # (entity, pair, k), k = span - 1 (after the last cutoff) dropped
        order = np.concatenate([pair + self._ks(day, o) for o in (0, p.days)])
        rows = np.argsort(order, kind="stable")
        order = order[rows]
        starts = np.flatnonzero(np.diff(order, prepend=-1))
        kept = order[starts] % span < span - 1
        values = np.column_stack([*(raw[c].to_numpy() for c in p.sums), np.ones(len(day), np.int64)])  # + n_rows
        values = np.concatenate([values, -values])[rows]
        deltas = np.add.reduceat(values, starts, axis=0)[kept] if len(starts) else values
        order, first_raw = order[starts][kept], rows[starts][kept] % max(len(day), 1)  # a row of each: its pair key
        code, pair = order // span // n_pairs * span + order % span, order // span
        new = np.ones(len(order), bool)  # a pair's first row
        new[1:] = pair[1:] != pair[:-1]
        if len(order) and np.add.reduceat(np.abs(deltas), np.flatnonzero(new), axis=0, dtype=float).max() > _DECIMAL_MAX:
            raise duckdb.ConversionException(f"a running sum of {', '.join(p.sums)} per {p.key} is over DECIMAL(18, 6)'s "
                                             "range")
        runs = _running_sums(deltas, np.flatnonzero(new))
        # a pair's state holds from its row's k until its next row's, or past the last cutoff
        ends, last = np.empty_like(code), np.ones(len(code), bool)
        ends[:-1], last[:-1] = code[1:], new[1:]
        ends[last] = code[last] // span * span + span
        changes = np.unique(code)
        alive = np.flatnonzero(runs[:, -1] > 0)
        lo, hi = np.searchsorted(changes, code[alive]), np.searchsorted(changes, ends[alive])
        n = hi - lo
        at = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())  # each alive pair's changes, in turn
        state = np.repeat(alive, n)
        pairs = {key: pa.array(changes[at] // span), "k": pa.array(changes[at] % span),
                 p.key: raw[p.key].take(pa.array(first_raw[state])),
                 **{c: pa.array(runs[state, j] / 1e6) for j, c in enumerate(p.sums)}}
        self.con.register("pairs_now", pa.table(pairs))
        self.con.register("pair_changes_now", pa.table({key: pa.array(changes // span), "k": pa.array(changes % span)}))
        try:
            return self.con.sql(f"SELECT {key} * {span} + k AS code, * EXCLUDE ({key}, k) FROM "
                                f"({self._pair_features(name, 'pairs_now', 'pair_changes_now')})").to_arrow_table().combine_chunks()
        finally:
            self.con.unregister("pairs_now")
            self.con.unregister("pair_changes_now")

    def _deltas(self, where: str) -> list[tuple[str, list[str]]]:
        """(SQL, columns) of every slice of deltas per (key, k) of the entities matching `where`: each source's per
        offset, the pair features' where they change (creating their tables), and each entity's first cutoff."""
        key, out = self.key, []
        for source in dict.fromkeys(s for s, _ in self.terms):
            out += self._slices(source, key, {col: (t.delta(), t.offset) for (s, t), col in self.terms.items()
                                              if s == source}, where)
        for name in dict.fromkeys(f.source for f in self.pair_features):
            self._pairs(name, where)
            cols = [f"p_{f.name}" for f in self.pair_features if f.source == name]
            out.append((f"SELECT {key}, k, {', '.join(cols)} FROM pf_{name}", cols))
        return [*out, (self._firsts(where), [])]

    def _firsts(self, where: str) -> str:
        """SQL of (key, k) of each entity's first cutoff, where every entity gets a row."""
        first, known = ((self._k(f"CAST({self.since} AS DATE)", 0), f"{self.since} < DATE '{self.last}'") if self.since
                        else ("0", "true"))
        return f"SELECT {self.key}, {first} AS k FROM ({self.grid}) WHERE {known} AND {where}"

    def _source_deltas(self, where: str) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """`_deltas`' slices of the sources, as (codes = key * span + k, ascending, {column: its deltas there}) with
        numpy: each source's rows of the entities matching `where` are read once and summed (or maxed) per (key, k)
        for every offset (a GROUP BY per offset in DuckDB took 3x the CPU). int64s: DECIMAL(18, 6) as millionths,
        days since 1970 (or _NONE)."""
        out = []
        for source in dict.fromkeys(s for s, _ in self.terms):
            terms = {col: t for (s, t), col in self.terms.items() if s == source}
            values, value = {}, {}  # SQL of a row's value -> its index, and each term's (terms differ by offset)
            for col, t in terms.items():
                x = t.expr if t.cond == "true" else f"CASE WHEN {t.cond} THEN {t.expr} END"
                sql = (f"coalesce({_EPOCH_DAY.format(x)}, {_NONE})" if t.agg == "max" else
                       _millionths(f"coalesce({x}, 0)") if t.sql_type.startswith("DECIMAL") else
                       f"CAST(coalesce({x}, 0) AS BIGINT)")
                value[col] = values.setdefault(sql, len(values))
            rows = self.con.sql(f"SELECT {self.key} AS key, {_EPOCH_DAY.format('day')} AS day, "
                                f"{', '.join(f'{sql} AS v{i}' for sql, i in values.items())} FROM src_{source} "
                                f"WHERE day < DATE '{self.last}' AND {where}").to_arrow_table().combine_chunks()
            key, day = rows["key"].to_numpy(), rows["day"].to_numpy()
            if not len(key):
                continue  # no deltas: the batch's sums stay 0
            # in (key, day) order, each offset's (key, k) groups are runs (rows mostly come in that order already)
            order = np.argsort(key * 2**24 + (day - day.min(initial=0)), kind="stable")
            key, day = key[order], day[order]
            columns = [rows[f"v{i}"].to_numpy()[order] for i in range(len(values))]
            for offset in sorted({t.offset for t in terms.values()}):
                codes = key * self.span + self._ks(day, offset)
                starts = np.flatnonzero(np.diff(codes, prepend=-1))
                kept = codes[starts] % self.span < self.span - 1  # rows counting after the last cutoff dropped
                deltas = {}
                for col, t in terms.items():
                    if t.offset != offset:
                        continue
                    v = columns[value[col]]
                    if t.sql_type.startswith("DECIMAL") and np.add.reduceat(
                            np.abs(v), starts, dtype=float).max() > _DECIMAL_MAX:  # an int64 sum could wrap
                        raise duckdb.ConversionException(f"a sum of {col} is over DECIMAL(18, 6)'s range")
                    deltas[col] = (np.maximum if t.agg == "max" else np.add).reduceat(v, starts)[kept]
                out.append((codes[starts][kept], deltas))
        return out

    def _states_sql(self, where: str) -> str:
        """SQL of the values per (key, k) with a delta, the grid's columns beside them: window functions over
        the deltas (Spark's way; DuckDB's window operator takes ~50 ns per value, `_states_arrow` ~1)."""
        key, w = self.key, _RUNNING.format(self.key)
        pairs = [f"p_{f.name}" for f in self.pair_features]
        grouped = ", ".join([*(f"{t.agg}({c}) AS {c}" for (_, t), c in self.terms.items()),
                             *(f"max({c}) AS {c}" for c in pairs)])
        running = ", ".join([*(f"{t.running(c, w)} AS {c}" for (_, t), c in self.terms.items()),
                             *(f"last_value({c} IGNORE NULLS) {w} AS {c}" for c in pairs)])
        states = (f"SELECT {key}, k, {running} FROM (SELECT {key}, k, {grouped} FROM "
                  f"({self._union(self._deltas(where), key, [*self.terms.values(), *pairs])}) GROUP BY {key}, k)")
        return f"SELECT g.*, s.* EXCLUDE ({key}) FROM ({states}) s JOIN ({self.grid}) g USING ({key})"

    def _states_arrow(self, where: str):
        """`_states_sql`'s rows as an Arrow table in (key, k) order, the running values computed with numpy: all
        sums at once as a cumulative sum down a matrix, less each entity's total before its first row."""
        key, span = self.key, self.span
        kinds = {col: t for (_, t), col in self.terms.items()}
        slices = []  # (codes, {column: its values there})
        for name in dict.fromkeys(f.source for f in self.pair_features):
            table = self._pairs_arrow(name, where)
            slices.append((table["code"].to_numpy(), {c: table[c] for c in table.column_names if c != "code"}))
        slices += self._source_deltas(where)
        slices.append((self.con.sql(f"SELECT {key} * {span} + k AS code FROM ({self._firsts(where)})").to_arrow_table()
                       ["code"].to_numpy(), {}))
        codes = np.sort(np.concatenate([c for c, _ in slices]))
        codes = codes[np.diff(codes, prepend=-1) != 0]
        n, keys = len(codes), codes // span
        first = np.flatnonzero(np.diff(keys, prepend=-1))  # each entity's first row
        entity = np.repeat(np.arange(len(first)), np.diff(np.r_[first, n]))  # each row's entity
        start = first[entity]  # each row's entity's first row

        sums = [c for c, t in kinds.items() if t.agg == "sum"]
        days = [c for c, t in kinds.items() if t.agg == "max"]
        total, last = _scratch("total", n, len(sums), 0), _scratch("last", n, len(days), _NONE)
        carried = {}
        for at, columns in slices:
            at = np.searchsorted(codes, at)
            for c, values in columns.items():
                if c in kinds:
                    into = total[:, sums.index(c)] if c in sums else last[:, days.index(c)]
                    into[at] = values
                else:  # a pair feature: carried forward from its entity's last change
                    row = np.full(n, -1)
                    row[at] = np.arange(len(at))
                    newest = np.maximum.accumulate(np.where(row >= 0, np.arange(n), -1))
                    found = newest >= start
                    carried[c] = pc.take(values, pa.array(np.where(found, row[newest], 0), mask=~found))
        decimal = [i for i, c in enumerate(sums) if kinds[c].sql_type.startswith("DECIMAL")]
        if any(np.abs(total[:, i]).sum(dtype=float) > _DECIMAL_MAX for i in decimal):  # an int64 could wrap: check
            if (np.abs(_running_sums(total[:, decimal].astype(float), first)) > _DECIMAL_MAX).any():
                raise duckdb.ConversionException(f"a running sum of {', '.join(sums[i] for i in decimal)} is over "
                                                 "DECIMAL(18, 6)'s range")
        _running_sums(total, first)
        base = (keys * (2 * _DAYS))[:, None]  # days packed beside their key: a running maximum stays per entity
        last = np.maximum.accumulate(np.where(last == _NONE, 0, last + _DAYS) + base, axis=0) - base
        grid = self.grid_arrow()
        out = {name: grid[name].take(pa.array(keys - 1)) for name in grid.column_names}
        out["k"] = pa.array(codes % span)
        for (_, t), c in self.terms.items():
            if c in days:
                v = last[:, days.index(c)]
                out[c] = pa.array((v - _DAYS).astype(np.int32), mask=v == 0).cast(pa.date32())
            elif t.sql_type.startswith("DECIMAL"):
                out[c] = pa.Array.from_buffers(pa.decimal64(18, 6), n, [None, pa.py_buffer(total[:, sums.index(c)])])
            else:
                out[c] = pa.array(total[:, sums.index(c)])
        for f in self.pair_features:
            out[f"p_{f.name}"] = carried[f"p_{f.name}"]
        return pa.table(out)

    def grid_arrow(self):
        """The grid as an Arrow table in key order (keys are 1..n: row i holds key i + 1)."""
        if self._grid is None:
            self._grid = self.con.sql(f"SELECT * FROM ({self.grid}) ORDER BY {self.key}").to_arrow_table().combine_chunks()
        return self._grid

    def _features_sql(self, states: str) -> str:
        """SQL of key, k, `out`, event_timestamp, the stored features and their hash `h` per row of `states`."""
        cols = []
        for f in self.features:
            if f.source == "derived":
                continue
            sql = self.sql.get(f.name, f"p_{f.name}")
            cols.append(_EPOCH_DAY.format(sql.removeprefix("T - ")) + f" AS {f.counts_from}" if f.counts_from
                        else f"CAST(coalesce({sql}, {f.default}) AS {_DTYPES[f.dtype]}) AS {f.name}")
        clock = clock_features(self.features)
        derived = [_EPOCH_DAY.format(f.sql.removeprefix("T - ")) + f" AS {f.counts_from}" if f.counts_from
                   else f"CAST(coalesce({f.sql}, {f.default}) AS {_DTYPES[f.dtype]}) AS {f.name}"
                   for f in self.features if f.source == "derived" and (f.counts_from or f not in clock)]
        stored = ", ".join(self.stored)
        sql = (f"SELECT {self.key}, k, {self.out}, CAST(T AS TIMESTAMP) AS event_timestamp, {stored}, hash({stored}) "
               f"AS h FROM (SELECT *, {', '.join(derived)} FROM (SELECT *, {', '.join(cols)} FROM {states}))")
        # `T` in feature SQL is the row's cutoff
        return re.sub(r"\bT\b", f"(DATE '{self.t0}' + CAST(k * {self.every} AS INTEGER))", sql)

    def changes_sql(self, where: str = "true") -> str:
        """SQL of the rows to write, all cutoffs at once, for the entities matching `where` (SQL over `key`):
        `out`, event_timestamp, the stored features, k (the cutoff's index), where one changed since the entity's
        previous row (or it is the first)."""
        rows = (f"SELECT *, lag(h) OVER (PARTITION BY {self.key} ORDER BY k) AS h_before FROM "
                f"({self._features_sql(f'({self._states_sql(where)})')})")
        return f"SELECT {self.out}, event_timestamp, {', '.join(self.stored)}, k FROM ({rows}) " \
               "WHERE h_before IS NULL OR h <> h_before"

    def changes_arrow(self, where: str):
        """`changes_sql`'s rows as an Arrow table in k order, from `_states_arrow` (DuckDB)."""
        self.con.register("states_now", self._states_arrow(where))
        try:
            table = self.con.sql(self._features_sql("states_now")).to_arrow_table()
        finally:
            self.con.unregister("states_now")
        keys, h = table[self.key].to_numpy(), table["h"].to_numpy()
        rows = np.argsort(keys * self.span + table["k"].to_numpy(), kind="stable")  # (key, k) order, as the states
        keys, h = keys[rows], h[rows]
        kept = rows[(np.diff(keys, prepend=-1) != 0) | (np.diff(h, prepend=h[:1]) != 0)]
        kept = kept[np.argsort(table["k"].to_numpy()[kept], kind="stable")]
        return table.drop_columns([self.key, "h"]).take(kept)


# DECIMAL(18, 6)'s range in millionths; a day's room in `_states_arrow`'s packed maxima, and "no day"
_DECIMAL_MAX, _DAYS, _NONE = 10**18 - 1, 2**21, -2**62
_SCRATCH = threading.local()


def _running_sums(deltas: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sums down each column of `deltas`, in place, starting over at each group's first row (`first`: 0,
    ascending): each group's first row less the group before's total, then one cumulative sum."""
    if len(first) > 1:
        deltas[first[1:]] -= np.add.reduceat(deltas, first, axis=0)[:-1]
    return np.cumsum(deltas, axis=0, out=deltas)


def _scratch(name: str, rows: int, cols: int, fill: int) -> np.ndarray:
    """A (rows, cols) int64 matrix (columns contiguous) of `fill`, in memory this thread reuses batch after batch: a
    fresh one (~300 MB at 25k customers) came as new pages from the OS each time, whose faults (~80k, ~8 us each on a
    virtual machine) took longer than the sums put into it."""
    buffers = _SCRATCH.__dict__
    if buffers.get(name) is None or buffers[name].size < rows * cols:
        buffers[name] = None  # the old one freed first; room for the next batches, a little larger or smaller
        buffers[name] = np.empty(rows * cols * 5 // 4, np.int64)
    out = buffers[name][:rows * cols].reshape((rows, cols), order="F")
    out.fill(fill)
    return out


class _ArrowTables:
    """The cutoffs' files from batches (DuckDB). Two batches are computed at once, each on its own cursor, and the
    one before them is spilled meanwhile (DuckDB, numpy and Arrow all release the GIL; a batch alone leaves a core
    idle half of the time): its rows of each cutoff appended to that cutoff's Arrow stream on disk (zstd: half the
    bytes of lz4, read back with 0.6x the CPU). Then each cutoff's file is written whole (`_write_sorted`), two at
    once: sorted per batch only, the tables at 1M took 1.23x the bytes."""

    def __init__(self, con, paths: list[Path], parts: Path, order: tuple[str, ...]):
        self.con, self.paths, self.order, self.rows = con, paths, order, 0
        self.parts = [parts / paths[0].parent.name / f"{k}.arrows" for k in range(len(paths))]
        self.streams, self.cursors = [], threading.local()

    def run(self, changes: _Changes, batches: list[str]) -> Iterator[int]:
        """Computes and spills the batches; yields each one's index once it is spilled."""
        changes.grid_arrow()  # fetched once, before the threads share it
        (threads,), = self.con.execute("SELECT current_setting('threads')").fetchall()
        # a batch's queries on one DuckDB thread: two batches at once keep both cores busy, and floats are summed in
        # one order (the mixes' shares and entropies), so a build's rows and values are the same run after run
        self.con.execute("SET threads = 1")
        try:
            yield from self._run(changes, batches)
        finally:
            self.con.execute(f"SET threads = {threads}")

    def _run(self, changes: _Changes, batches: list[str]) -> Iterator[int]:
        with ThreadPoolExecutor(2) as computing, ThreadPoolExecutor(1) as spilling:
            todo, running, spilled = iter(batches), deque(), None
            for where in itertools.islice(todo, 2):
                running.append(computing.submit(self._compute, changes, where))
            for i in range(len(batches)):
                table = running.popleft().result()
                if (where := next(todo, None)) is not None:
                    running.append(computing.submit(self._compute, changes, where))
                k = table["k"].to_numpy()
                table = table.drop_columns(["k"])
                if not self.streams:
                    self.parts[0].parent.mkdir(parents=True, exist_ok=True)
                    zstd = pa.ipc.IpcWriteOptions(compression="zstd")
                    self.streams = [pa.ipc.new_stream(p, table.schema, options=zstd) for p in self.parts]
                if spilled is not None:
                    spilled.result()
                    yield i - 1
                spilled = spilling.submit(self._spill, table, np.searchsorted(k, np.arange(len(self.paths) + 1)))
                self.rows += table.num_rows
            if spilled is not None:
                spilled.result()
                yield len(batches) - 1

    def _compute(self, changes: _Changes, where: str):
        if not hasattr(self.cursors, "con"):
            self.cursors.con = self.con.cursor()  # its own temp tables; the sources are shared tables
        mine = copy.copy(changes)
        mine.con = self.cursors.con
        return mine.changes_arrow(where)

    def _spill(self, table, bounds) -> None:
        for stream, lo, hi in zip(self.streams, bounds, bounds[1:]):
            if hi > lo:
                stream.write_table(table.slice(lo, hi - lo))

    def close(self, written: Callable[[Path], None]) -> int:
        """Writes each cutoff's file (`written` is told of each, in order); the number of rows."""
        for stream in self.streams:
            stream.close()

        def rows(k: int) -> pa.Table:
            with pa.memory_map(str(self.parts[k])) as source:
                return pa.ipc.open_stream(source).read_all()

        # which columns repeat enough for a dictionary, decided once, on the largest file
        largest = rows(max(range(len(self.parts)), key=lambda k: self.parts[k].stat().st_size))
        repeating = [c for c in largest.column_names
                     if pc.count_distinct(largest[c]).as_py() < _DICTIONARY_SHARE * largest.num_rows]

        def write(k: int) -> Path:
            _write_sorted(rows(k), self.paths[k], self.order, repeating)
            self.parts[k].unlink()
            return self.paths[k]

        with ThreadPoolExecutor(2) as writing:  # Arrow's sort and Parquet writer release the GIL
            for path in writing.map(write, range(len(self.streams))):
                written(path)
        return self.rows


# A column is dictionary-encoded when it has fewer distinct values than this share of its rows (DuckDB's writer
# chooses so too): at 200k, 3% fewer bytes than Parquet's default of a dictionary for all, and than DuckDB's files
_DICTIONARY_SHARE = 0.1


def _write_sorted(table: pa.Table, path: Path, order: tuple[str, ...], repeating: list[str]) -> None:
    """A cutoff's Parquet file (zstd), sorted by `order` (alike rows side by side compress better), with dictionaries
    for the `repeating` columns. pyarrow, not DuckDB's COPY: half the CPU for the same bytes, two files at once."""
    if order:
        rows = pc.sort_indices(table, [(c, "ascending") for c in order])
        table = table.take(rows)
    pq.write_table(table, path, compression="zstd", use_dictionary=repeating, row_group_size=122_880)


class _SparkTables:
    """The cutoffs' files, from Spark: each batch's rows to a part file (written by the executors), then each
    cutoff's file from its rows in the parts."""

    def __init__(self, con, paths: list[Path], parts: Path, order: tuple[str, ...]):
        self.con, self.paths, self.parts, self.order, self.written = con, paths, parts / paths[0].parent.name, order, []

    def run(self, changes: _Changes, batches: list[str]) -> Iterator[int]:
        for i, where in enumerate(batches):
            path = self.parts / f"{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.con.execute(f"COPY ({changes.changes_sql(where)}) TO '{path}' (FORMAT parquet)")
            self.written.append(repr(str(path)))
            yield i

    def close(self, written: Callable[[Path], None]) -> int:
        order = f" ORDER BY {', '.join(self.order)}" if self.order else ""
        for k, path in enumerate(self.paths):
            self.con.execute(f"COPY (SELECT * EXCLUDE (k) FROM read_parquet([{', '.join(self.written)}]) WHERE k = {k}"
                             f"{order}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
            written(path)
        return sum(self.con.execute(f"SELECT count(*) FROM '{path}'").fetchone()[0] for path in self.paths)


def profile_columns(con) -> dict[str, str]:
    """CRM attributes: the customers table's extra columns, minus PII (hashed contact details are no
    attribute, e.g. `contact_email`) and bookkeeping."""
    skip = {c.name for c in TABLES["customers"].columns} | {"_load"}
    return {name: typ for name, typ, *_ in con.execute("DESCRIBE customers").fetchall()
            if name not in skip and pii_kind(name) is None}


def span(con) -> tuple[date, date]:
    """(first day with data, latest snapshot date) of a lake with events or customers. The data's own end is "now", never the wall clock: the
    midnight after the newest event, or the day of the newest explicit label when that is later (a CRM
    extract labelled as of its export day gets a snapshot on that day). A lake without events (a CRM
    snapshot) starts at the first signup."""
    first, end = con.execute("SELECT CAST(min(ts) AS DATE), CAST(max(ts) AS DATE) + 1 FROM events_all").fetchone()
    signup, labelled = con.execute("SELECT (SELECT CAST(min(signup_at) AS DATE) FROM customers), "
                                   "(SELECT CAST(max(as_of) AS DATE) FROM labels)").fetchone()
    latest = max(d for d in (end, labelled, signup and signup + timedelta(days=1)) if d)
    return first or signup, latest


def _sources(con, advance=lambda _: None) -> None:
    """Creates `people` (everyone known: customers, and anonymous profiles with events; `since` = signup or first
    event), `goods` (the items) and the daily sources `src_<name>` keyed by their numbers, `pid` and `iid` (in id
    order). Tables, not temp tables: the cursors computing batches side by side read them."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE daily AS {_DAILY}")
    con.execute("CREATE OR REPLACE TABLE people AS SELECT customer_id, row_number() OVER (ORDER BY customer_id) "
                "AS pid, least(min(c.signup_at), min(e.ts)) AS since FROM (SELECT customer_id, signup_at FROM customers) c "
                "FULL JOIN (SELECT customer_id, min(first_ts) AS ts FROM daily GROUP BY 1) e USING (customer_id) "
                "GROUP BY 1")
    con.execute("CREATE OR REPLACE TABLE goods AS SELECT row_number() OVER (ORDER BY item_id) AS iid, item_id, "
                "price, category, brand FROM items")
    for name, sql in _SOURCES.items():
        if name == "touches":  # src_daily holds what is needed of `daily`: memory for the per-item rows instead
            con.execute("DROP TABLE daily")
            con.execute(f"CREATE OR REPLACE TEMP TABLE item_day AS {_ITEM_DAY}")
        con.execute(f"CREATE OR REPLACE TABLE src_{name} AS {sql} ORDER BY {'iid' if name == 'item_daily' else 'pid'}")
        advance(f"source {name}")
    con.execute("DROP TABLE item_day")


def _entities(con, cuts: list[date], every_days: int, size: int) -> list[tuple[str, _Changes, list[str]]]:
    """(entity, its change rows, the SQL of each batch of it), after `_sources`: customers `size` at a time (a batch
    holds its customers' rows of every cutoff in memory), items at once."""
    (people,), = con.execute("SELECT count(*) FROM people").fetchall()
    return [("customer", _Changes(con, CUSTOMER_FEATURES, "pid", "customer_id", "SELECT * FROM people", "since", cuts,
                                  every_days), [f"pid > {lo} AND pid <= {lo + size}" for lo in range(0, max(people, 1), size)]),
            ("item", _Changes(con, ITEM_FEATURES, "iid", "item_id", "SELECT * EXCLUDE (brand) FROM goods", None, cuts, every_days),
             ["true"])]


ENGINES = ("duckdb", "spark")


def build(ws: Workspace, every_days: int = 7, snapshots: int = 52, progress: bool = False,
          engine: str = "duckdb") -> BuildReport:
    """Compute all snapshots from the lake into `data/features/`, replacing the previous build. `engine="spark"`
    runs the same SQL on Apache Spark (propel.features.spark)."""
    started = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    lake = Lake(ws)
    if not lake.files("events") and not lake.files("customers"):
        raise FileNotFoundError(f"{lake.root}: the lake has no events or customers yet. Run `propel ingest RAW_DIR` first.")

    def refuse(holder: str) -> Busy:
        return Busy(f"{ws.features}: another feature build is running ({holder}); one build at a time. Fix: wait for "
                    "it to finish, then re-run this command.")
    with exclusive(ws.features_lock, f"features build, engine {engine}", refuse):
        return _build(ws, lake, every_days, snapshots, progress, engine, started)


def _build(ws: Workspace, lake: Lake, every_days: int, snapshots: int, progress: bool, engine: str,
           started: float) -> BuildReport:
    """The build, under the lock: staged in `features.building`, then swapped in whole (a crash leaves the
    previous build, or, between the swap's two renames, the previous one under `features.previous`, put back by
    the next build)."""
    out = ws.features
    tmp, previous = out.with_name(out.name + ".building"), out.with_name(out.name + ".previous")
    if previous.exists() and not out.exists():
        previous.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    if engine == "spark":
        from propel.features import spark

        con = spark.connect(lake)
    else:
        con = lake.connect()
    first, latest = span(con)
    # a snapshot before any event has no behaviour in it: history shorter than the snapshots asked for gets fewer
    cuts = [T for T in cutoffs(latest, every_days, snapshots) if T > first] or [latest]
    shutil.rmtree(tmp, ignore_errors=True)
    def staged(path: Path) -> Path:  # where a workspace path is written until the build is swapped in
        return tmp / path.relative_to(out)

    staged(ws.customer_snapshots).mkdir(parents=True)
    staged(ws.item_snapshots).mkdir(parents=True)
    with steps(progress, "features", len(_SOURCES) + 2) as advance:
        _sources(con, advance)
        size = ws.settings().features.build_people
        entities = [(entity, changes, staged(folder), batches)
                    for (entity, changes, batches), folder in zip(_entities(con, cuts, every_days, size),
                                                                  (ws.customer_snapshots, ws.item_snapshots))]
        advance("people", sum(len(batches) + len(cuts) for *_, batches in entities))
        # customer rows sorted by lifetime purchases and revenue: alike customers side by side compress better (the
        # 52 files at 1M to 80% of their unsorted bytes). Readers need no order (asof.py sorts itself)
        orders = (("lifetime_purchases", "lifetime_revenue"), ())
        rows = []
        for (entity, changes, sub, batches), order in zip(entities, orders):
            paths = [sub / f"{T.isoformat()}.parquet" for T in cuts]
            tables = (_SparkTables if engine == "spark" else _ArrowTables)(con, paths, tmp / "parts", order)
            try:
                for i in tables.run(changes, batches):
                    crash_point("features_snapshot")
                    advance(f"{entity}s, batch {i + 1} of {len(batches)}")
            except duckdb.ConversionException as exc:  # a cumulative sum outgrew _EXACT
                raise ValueError(f"{lake.root}: a feature's running sum is out of range "
                                 f"({str(exc).splitlines()[0]}); feature sums keep up to 10^12 per customer. "
                                 "Check the events' revenue and quantity columns for unit errors.") from None
            rows.append(tables.close(lambda path: advance(f"{entity}s, {path.name}")))
        shutil.rmtree(tmp / "parts", ignore_errors=True)  # the batches' rows on their way to the files
        crm = profile_columns(con)
        cols = "".join(f', "{c}"' for c in crm)
        con.execute(f"COPY (SELECT customer_id, since AS event_timestamp{cols} FROM people "
                    "LEFT JOIN customers USING (customer_id)) "
                    f"TO '{staged(ws.profile)}' (FORMAT parquet, COMPRESSION zstd)")  # 1M: 18 MB, not 27 (snappy)
        advance("profile")
    loads = [m["load_id"] for m in lake.manifests()]
    catalog = {"cutoffs": [c.isoformat() for c in cuts], "every_days": every_days, "layout": LAYOUT, "lake_load": loads[-1],
               "profile_columns": crm, "customer_rows": rows[0], "item_rows": rows[1]}
    staged(ws.catalog).write_text(json.dumps(catalog, indent=2))
    if out.exists():
        out.rename(previous)
    crash_point("features_swap")
    tmp.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    return BuildReport(catalog["cutoffs"], rows[0], rows[1], list(crm), time.perf_counter() - started)


def load_catalog(ws: Workspace) -> dict:
    path: Path = ws.catalog
    if not path.exists():
        raise FileNotFoundError(f"{path}: no features built yet. Run `propel features build` first.")
    return json.loads(path.read_text())

"""`propel features build`: point-in-time feature snapshots from the lake, with DuckDB.

Events are first reduced to small per-customer (and per-item) *daily* tables; each snapshot at
cutoff T (a midnight, UTC) then aggregates only days strictly before T, so a snapshot never sees an
event at or after its own timestamp. Snapshots are computed oldest first, each from the previous one's
running sums plus the days that entered and left each window (`_Snapshots`). Cutoffs are every `every_days` days back from the "latest"
snapshot, which is the midnight after the newest event. Output (Parquet, one file per cutoff holding only
the entities whose stored values changed since their previous row, or that are new):

  data/features/customer_features/<date>.parquet   customer_id, event_timestamp, stored customer features
  data/features/item_features/<date>.parquet       item_id, event_timestamp, stored item features
  data/features/customer_profile.parquet           CRM attributes (timestamp = signup), see below
  data/features/catalog.json                       cutoffs, CRM columns and types, the lake load used

Features that move with the clock alone (days since the last purchase, tenure) are stored as the day they
count from, so a customer's row does not change just because a week passed. Read the tables only through
`propel.features.asof` ("the features as of T": newest row per entity, clock features counted from T).

All SQL is plain aggregate/join SQL over Parquet, so it ports to Spark SQL as it is.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb

from propel.features.definitions import (CUSTOMER_FEATURES, FEATURE_CHANNELS, ITEM_FEATURES, Feature, clock_features,
                                        stored_features)
from propel.lake.tables import Busy, Lake, crash_point, exclusive
from propel.lake.schema import TABLES, pii_kind
from propel.config import Workspace
from propel.progress import steps

_DTYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR"}
LAYOUT = "changes"  # the catalog's name for the feature tables' layout: rows only when values change (asof.py reads it)

# Per-customer daily sources; features aggregate them with `day < T`.
_SOURCES = {
    "daily": f"""
        SELECT customer_id, CAST(ts AS DATE) AS day, min(ts) AS first_ts, count(*) AS n_events,
          {', '.join(f"count(*) FILTER (WHERE channel = '{c}') AS n_{c}" for c in FEATURE_CHANNELS)},
          count(*) FILTER (WHERE event_type = 'product_view') AS n_views,
          count(*) FILTER (WHERE event_type = 'add_to_cart') AS n_carts,
          count(*) FILTER (WHERE event_type = 'purchase') AS n_purchases,
          coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
          count(DISTINCT session_id) AS n_sessions,
          count(*) FILTER (WHERE event_type = 'email_open') AS n_email_opens,
          count(*) FILTER (WHERE event_type = 'email_click') AS n_email_clicks,
          count(*) FILTER (WHERE event_type = 'sms_click') AS n_sms_clicks,
          count(*) FILTER (WHERE event_type = 'purchase' AND campaign_id IS NOT NULL) AS n_campaign_purchases
        FROM events GROUP BY ALL""",
    "touches": """
        SELECT t.customer_id, CAST(t.sent_at AS DATE) AS day, count(*) AS n_touches,
          count(*) FILTER (WHERE c.channel = 'email') AS n_email_touches,
          count(*) FILTER (WHERE c.channel = 'sms') AS n_sms_touches
        FROM campaign_touches t LEFT JOIN campaigns c USING (campaign_id)
        WHERE t."group" = 'treatment' GROUP BY ALL""",
    "gaps": """
        SELECT customer_id, day, day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) AS gap
        FROM (SELECT DISTINCT customer_id, CAST(ts AS DATE) AS day FROM events WHERE event_type = 'purchase')""",
    "cat_daily": """
        SELECT e.customer_id, CAST(e.ts AS DATE) AS day, coalesce(i.category, 'unknown') AS category,
          coalesce(sum(e.revenue) FILTER (WHERE e.event_type = 'purchase'), 0) AS spend,
          count(*) FILTER (WHERE e.event_type = 'purchase') AS n_bought,
          count(*) FILTER (WHERE e.event_type IN ('product_view', 'add_to_cart')) AS n_viewed,
          coalesce(sum(e.revenue / nullif(e.quantity, 0) / nullif(cp.avg_price, 0))
                   FILTER (WHERE e.event_type = 'purchase'), 0) AS price_ratio_sum
        FROM events e JOIN items i USING (item_id)
        LEFT JOIN (SELECT category, avg(price) AS avg_price FROM items GROUP BY 1) cp USING (category)
        WHERE e.item_id IS NOT NULL GROUP BY ALL""",
    "brand_daily": """
        SELECT e.customer_id, CAST(e.ts AS DATE) AS day, i.brand, count(*) AS n_bought
        FROM events e JOIN items i USING (item_id)
        WHERE e.event_type = 'purchase' AND i.brand IS NOT NULL GROUP BY ALL""",
    "item_daily": """
        SELECT item_id, CAST(ts AS DATE) AS day,
          count(*) FILTER (WHERE event_type = 'product_view') AS n_views,
          count(*) FILTER (WHERE event_type = 'purchase') AS n_purchases
        FROM events WHERE item_id IS NOT NULL GROUP BY ALL""",
}
# Per-customer sources with one row per (customer, day, pair key), kept as a 365-day running state of
# sums per pair; `sql` aggregates that state (the table `pairs`) into per-pair rows for the features.
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
        FROM pairs c JOIN (SELECT pid, sum(spend) AS spend, sum(n_viewed) AS n_viewed FROM pairs GROUP BY pid) t
        USING (pid)"""),
    "brands": _Pairs("brand_daily", "brand", ("n_bought",), 365, """
        SELECT pid, n_bought / sum(n_bought) OVER (PARTITION BY pid) AS brand_share FROM pairs"""),
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


# The aggregate shapes a feature over a daily source may have; each becomes running state (see _Snapshots).
_SUM = re.compile(r"sum\((?P<x>.+?)\)(?: FILTER \(WHERE day >= T - (?P<a>\d+)(?: AND day < T - (?P<b>\d+))?\))?")
_LAST = re.compile(r"T - max\(day\)(?: FILTER \(WHERE (?P<cond>.+)\))?")
_MOMENT = re.compile(r"(?P<fn>avg|stddev_samp)\((?P<x>\w+)\)")
# Running sums are exact, so what leaves a window leaves no residue, and 8 bytes wide: floats keep 6 decimals,
# up to 10^12 per customer.
_EXACT = {"int": "BIGINT", "float": "DECIMAL(18, 6)"}


@dataclass(frozen=True)
class _State:
    """A running column: `agg` ("sum" or "max") of `expr` over the rows entering it (days in [previous cutoff -
    enter, cutoff - enter)) is folded in and, for a sum over a window, that of the rows leaving it taken out."""
    column: str
    sql_type: str
    agg: str
    expr: str
    cond: str = "true"
    enter: int = 0
    leave: int | None = None


def _states(f: Feature) -> tuple[list[_State], str]:
    """The running columns a feature needs and its SQL over them (`s.` = its source's state table)."""
    if m := _SUM.fullmatch(f.sql):
        x = f"CAST({m['x']} AS {_EXACT[f.dtype]})"
        leave = None if m["a"] is None else int(m["a"])
        return [_State(f.name, _EXACT[f.dtype], "sum", x, enter=int(m["b"] or 0), leave=leave)], f"s.{f.name}"
    if m := _LAST.fullmatch(f.sql):
        return [_State(f.name, "DATE", "max", "day", m["cond"] or "true")], f"T - s.{f.name}"
    if m := _MOMENT.fullmatch(f.sql):
        x = m["x"]
        n, s1, s2 = (f"s.{x}__{p}" for p in ("n", "s1", "s2"))
        states = [_State(f"{x}__n", "BIGINT", "sum", f"CAST({x} IS NOT NULL AS INT)"),
                  _State(f"{x}__s1", "BIGINT", "sum", x), _State(f"{x}__s2", "BIGINT", "sum", f"{x} * {x}")]
        sql = (f"{s1} / nullif({n}, 0)" if m["fn"] == "avg"
               else f"sqrt(({s2} * {n} - {s1} * {s1}) / nullif({n} * ({n} - 1), 0))")  # exact integers until the sqrt
        return states, sql
    raise ValueError(f"feature {f.name}: `{f.sql}` over source {f.source} is not a shape the snapshot build keeps "
                     "running (sum(x) [FILTER (WHERE day >= T - N [AND day < T - M])], T - max(day) [FILTER (WHERE "
                     "...)], avg(x), stddev_samp(x)); add it to propel/features/build.py or use a derived feature")


def _step(states: list[_State], table: str, source: str, keys: str, prev: str, T: str) -> str:
    """SQL of `table` (running states) moved from cutoff `prev` to `T`.

    One scan of the source per distinct offset reads only the days that moved (sources are sorted by day,
    so DuckDB skips the rest). Only the entities they touch are joined and recomputed; the rest are copied:
    a join's cost grows with its rows times the columns it carries, and most entities are idle in a week.
    """
    offsets = sorted(_offsets(states))
    slices = []
    for days in offsets:
        aggs = [(st, "in") for st in states if st.enter == days] + [(st, "out") for st in states if st.leave == days]
        cols = ", ".join(f"{st.agg}({st.expr})" + (f" FILTER (WHERE {st.cond})" if st.cond != "true" else "")
                         + f" AS {st.column}__{way}" for st, way in aggs)
        slices.append(f"SELECT {keys}, {cols} FROM src_{source} WHERE day >= {prev} - {days} AND day < {T} - {days} "
                      f"GROUP BY {keys}")
    names = [f"moved{i}" for i in range(len(slices))]
    ctes = [f"{n} AS MATERIALIZED ({sql})" for n, sql in zip(names, slices)]
    ctes.append("moved_keys AS (" + " UNION ".join(f"SELECT {keys} FROM {n}" for n in names) + ")")
    joins = " ".join(f"LEFT JOIN {n} USING ({keys})" for n in names)
    return (f"WITH {', '.join(ctes)} SELECT * FROM {table} ANTI JOIN moved_keys USING ({keys}) UNION ALL "
            f"SELECT {keys}, {_updates(states)} FROM moved_keys LEFT JOIN {table} o USING ({keys}) {joins}")


def _offsets(states: list[_State]) -> set[int]:
    """The day offsets at which rows enter or leave the states' windows."""
    return {st.enter for st in states} | {st.leave for st in states if st.leave is not None}


def _moved(source: str, keys: str, offsets: set[int], prev: str, T: str) -> str:
    """SQL of the distinct keys with rows of `source` entering a window between cutoffs `prev` and `T`, or
    leaving one, at any of the offsets (in days)."""
    days = " OR ".join(f"day >= {prev} - {d} AND day < {T} - {d}" for d in sorted(offsets))
    return f"SELECT DISTINCT {keys} FROM src_{source} WHERE {days}"


# A stored day: days since 1970-01-01 (an integer every store carries: Parquet, Feast, SQLite, Redis, Spark)
_EPOCH_DAY = "date_diff('day', DATE '1970-01-01', {})"


def _updates(states: list[_State]) -> str:
    """SQL for the state columns after a step, from their old values (`o`) and the moved rows' aggregates."""
    def update(st: _State) -> str:
        if st.agg == "max":
            return f"greatest(o.{st.column}, {st.column}__in)"
        out = f" - coalesce({st.column}__out, 0)" if st.leave is not None else ""
        return f"CAST(coalesce(o.{st.column}, 0) + coalesce({st.column}__in, 0){out} AS {st.sql_type})"
    return ", ".join(f"{update(st)} AS {st.column}" for st in states)


class _Snapshots:
    """Feature rows for one entity (customers or items) at cutoff after cutoff, kept incrementally.

    A snapshot at T aggregates days before T; rather than re-aggregating a year of history for each of 52
    cutoffs, running state per source moves from one cutoff to the next: sums over a window add the days
    entering it and subtract those leaving it, "last day" columns take the newer maximum, and the
    category and brand mixes keep per-pair sums over their window. The first step, from before the first
    event, is a from-scratch computation by the same SQL, so building one snapshot alone gives the same
    rows as reaching it step by step (tests/test_features.py checks). Joins (anti and semi included),
    FILTERed aggregates and CTEs: all of it has a Spark SQL equivalent.

    Rows are written only for entities whose stored values changed since their previous row, or that are
    new (`changes`): the entities a step touched are recomputed and compared with `latest_<out>`, each
    entity's newest row. Features that move with the clock alone are stored as the day they count from.
    """

    def __init__(self, con, features: tuple[Feature, ...], key: str, out: str):
        """`key` joins the sources and the grid; `out`, a grid column, identifies rows in the output."""
        self.con, self.features, self.key, self.out = con, features, key, out
        self.clock = clock_features(features)
        self.stored = [f.name for f in stored_features(features)]
        self.by_source: dict[str, list[_State]] = {}
        self.sql: dict[str, str] = {}  # feature -> SQL over its source's state
        for f in features:
            if f.counts_from and not f.sql.startswith("T - "):
                raise ValueError(f"feature {f.name}: counts_from needs SQL `T - <day>`, not `{f.sql}`")
            if f.source == "derived" or f.source in _PAIRS:
                continue
            states, self.sql[f.name] = _states(f)
            cols = self.by_source.setdefault(f.source, [])
            cols += [st for st in states if st not in cols]
        # per pair source, its running columns: the pair's sums over the window and its number of rows in it
        self.pairs = {name: [*(_State(c, _EXACT["float"], "sum", f"CAST({c} AS {_EXACT['float']})", leave=p.days)
                               for c in p.sums), _State("n_rows", "BIGINT", "sum", "1", leave=p.days)]
                      for name, p in sorted(_PAIRS.items()) if any(f.source == name for f in features)}
        sources = [*self.by_source, *(_PAIRS[p].source for p in self.pairs)]
        days = [d for d, in (con.execute(f"SELECT min(day) FROM src_{s}").fetchone() for s in sources) if d]
        self.cutoff = f"DATE '{min(days, default=date.max).isoformat()}'"  # before any row: the first step starts here
        self.latest, self.started = f"latest_{out}", False  # each entity's newest row written, once `changes` ran
        for source, states in self.by_source.items():
            self._empty(f"st_{source}", key, source, states)
        for name, states in self.pairs.items():
            self._empty(f"pairs_{name}", f"{key}, {_PAIRS[name].key}", _PAIRS[name].source, states)
            con.execute(f"CREATE OR REPLACE TEMP TABLE pf_{name} AS {self._pair_features(name, 'WHERE false')}")

    def _empty(self, table: str, keys: str, source: str, states: list[_State]) -> None:
        """A state table with no rows yet: the source's key columns and the states' typed columns."""
        cols = ", ".join(f"CAST(NULL AS {st.sql_type}) AS {st.column}" for st in states)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {keys}, {cols} FROM src_{source} LIMIT 0")

    def _pair_features(self, name: str, where: str) -> str:
        """SQL of the features over a pair source, per entity, from the pair rows matching `where`."""
        p, key = _PAIRS[name], self.key
        rows = ", ".join([key, p.key, *(f"CAST({c} AS DOUBLE) AS {c}" for c in p.sums)])
        pairs = p.sql.replace("FROM pairs", f"FROM (SELECT {rows} FROM pairs_{name} {where})")
        aggs = ", ".join(f"{f.sql} AS {f.name}" for f in self.features if f.source == name)
        return f"SELECT {key}, {aggs} FROM ({pairs}) GROUP BY {key}"

    def advance(self, T: date) -> None:
        """Move every state from the previous cutoff to T; `touched_<out>` = the entities whose states moved."""
        prev, t_sql, key = self.cutoff, f"DATE '{T.isoformat()}'", self.key
        touched = []
        for source, states in self.by_source.items():
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE st_{source} AS "
                             f"{_step(states, f'st_{source}', source, key, prev, t_sql)}")
            touched.append(_moved(source, key, _offsets(states), prev, t_sql))
        for name, states in self.pairs.items():
            p = _PAIRS[name]
            step = _step(states, f"pairs_{name}", p.source, f"{key}, {p.key}", prev, t_sql)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE pairs_{name} AS SELECT * FROM ({step}) WHERE n_rows > 0")
            # features change only for entities with rows entering or leaving the window: recompute just those
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE changed AS {_moved(p.source, key, {0, p.days}, prev, t_sql)}")
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE pf_{name} AS SELECT * FROM pf_{name} ANTI JOIN changed "
                             f"USING ({key}) UNION ALL {self._pair_features(name, f'SEMI JOIN changed USING ({key})')}")
            touched.append(_moved(p.source, key, {0, p.days}, prev, t_sql))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE touched_{self.out} AS {' UNION '.join(touched)}")
        self.cutoff = t_sql

    def changes(self, grid: str, T: date) -> str:
        """After `advance(T)`: the SQL of the rows at T to write, the entities of `grid` that are new or whose
        stored values differ from their latest row; those rows become their latest. Only entities whose
        states moved can differ, so only they and the new ones are computed."""
        key, latest, out = self.key, self.latest, self.out
        if self.started:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE due AS SELECT {key} FROM touched_{out} UNION "
                             f"SELECT {key} FROM ({grid}) n ANTI JOIN {latest} USING ({key})")
            rows = self.select(f"SELECT g.* FROM ({grid}) g SEMI JOIN due USING ({key})", T, only="due")
        else:  # the first cutoff: everyone is new
            rows = self.select(grid, T)
        # `latest` keeps a 64-bit hash of each entity's stored values, not the values: comparing and rewriting
        # two columns instead of ~80 (a collision, ~1e-19 per comparison, would drop one changed row)
        if not self.started:
            self.started = True
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {latest} AS SELECT {key}, CAST(NULL AS UBIGINT) AS h "
                             f"FROM ({grid}) LIMIT 0")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE changed_{out} AS SELECT c.* FROM (SELECT *, "
                         f"hash({', '.join(self.stored)}) AS h FROM ({rows})) c "
                         f"LEFT JOIN {latest} l ON c.{key} = l.{key} WHERE l.h IS DISTINCT FROM c.h")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {latest} AS SELECT * FROM {latest} ANTI JOIN changed_{out} "
                         f"USING ({key}) UNION ALL SELECT {key}, h FROM changed_{out}")
        return f"SELECT {out}, event_timestamp, {', '.join(self.stored)} FROM changed_{out}"

    def select(self, grid: str, T: date, only: str | None = None) -> str:
        """SQL of the stored rows at T (after `advance(T)`) of the grid's entities: grid LEFT JOIN the states,
        then derived features; clock features as the day they count from (`_EPOCH_DAY`). `only`: a table of
        the keys the grid is limited to, which the states are cut to before the joins (smaller hash tables)."""
        key, joins, cols = self.key, [], []
        for f in self.features:
            if f.source in self.by_source:
                sql = re.sub(r"\bs\.", f"s_{f.source}.", self.sql[f.name])
            elif f.source in _PAIRS:
                sql = f"p_{f.source}.{f.name}"
            else:
                continue
            cols.append(_EPOCH_DAY.format(sql.removeprefix("T - ")) + f" AS {f.counts_from}" if f.counts_from
                        else f"CAST(coalesce({sql}, {f.default}) AS {_DTYPES[f.dtype]}) AS {f.name}")
        cut = (lambda t: f"(SELECT * FROM {t} SEMI JOIN {only} USING ({key}))") if only else (lambda t: t)
        joins += [f"LEFT JOIN {cut(f'st_{s}')} s_{s} USING ({key})" for s in self.by_source]
        joins += [f"LEFT JOIN {cut(f'pf_{name}')} p_{name} USING ({key})" for name in self.pairs]
        derived = [_EPOCH_DAY.format(f.sql.removeprefix("T - ")) + f" AS {f.counts_from}" if f.counts_from
                   else f"CAST(coalesce({f.sql}, {f.default}) AS {_DTYPES[f.dtype]}) AS {f.name}"
                   for f in self.features if f.source == "derived" and (f.counts_from or f not in self.clock)]
        keys = key if key == self.out else f"{key}, {self.out}"
        # rows in no particular order: sorting 1.55M wide rows was a fifth of a snapshot's time, and readers
        # that need an order (segments' k-means) sort themselves (build sorts only the change rows it writes)
        sql = (f"SELECT {keys}, CAST(T AS TIMESTAMP) AS event_timestamp, {', '.join(self.stored)} FROM ("
               f"SELECT *, {', '.join(derived)} FROM (SELECT g.*, {', '.join(cols)} FROM ({grid}) g {' '.join(joins)}))")
        return re.sub(r"\bT\b", f"DATE '{T.isoformat()}'", sql)  # `T` in feature SQL is the snapshot date


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
    with steps(progress, "features", len(_SOURCES) + len(cuts) + 1) as advance:
        # Everyone known: customers, and anonymous profiles with events; `since` = signup or first event
        # (from the daily source, which saves a scan of the events). `pid` numbers them in customer_id
        # order: sources keyed by it are smaller and join faster.
        con.execute(f"CREATE OR REPLACE TEMP TABLE daily_by_id AS {_SOURCES['daily']}")
        con.execute("CREATE OR REPLACE TEMP TABLE people AS SELECT customer_id, row_number() OVER (ORDER BY customer_id) "
                    "AS pid, least(min(c.signup_at), min(e.ts)) AS since FROM (SELECT customer_id, signup_at FROM customers) c "
                    "FULL JOIN (SELECT customer_id, min(first_ts) AS ts FROM daily_by_id GROUP BY 1) e USING (customer_id) "
                    "GROUP BY 1")
        for name, sql in _SOURCES.items():
            if name == "daily":
                sql = "SELECT * EXCLUDE (first_ts) FROM daily_by_id"
            if name != "item_daily":  # a customer source: people who are not known have no snapshot rows
                sql = f"SELECT p.pid, s.* EXCLUDE (customer_id) FROM ({sql}) s JOIN people p USING (customer_id)"
            con.execute(f"CREATE OR REPLACE TEMP TABLE src_{name} AS {sql} ORDER BY day")
            if name == "daily":
                con.execute("DROP TABLE daily_by_id")
            advance(f"source {name}")
        rows = [0, 0]
        entities = ((_Snapshots(con, CUSTOMER_FEATURES, "pid", "customer_id"), staged(ws.customer_snapshots)),
                    (_Snapshots(con, ITEM_FEATURES, "item_id", "item_id"), staged(ws.item_snapshots)))
        grids = ("SELECT * FROM people WHERE since < DATE '{T}'", "SELECT item_id, price, category FROM items")
        # customer rows sorted by lifetime purchases and revenue: alike customers side by side compress better, the
        # 52 files at 1M to 80% of their unsorted bytes (1,097 MB, not 1,369), for ~1.3x the COPY's time.
        # Readers need no order (asof.py sorts itself); item files are small and stay unsorted
        orders = (" ORDER BY lifetime_purchases, lifetime_revenue", "")
        for T in cuts:
            for i, ((snapshots, sub), grid, order) in enumerate(zip(entities, grids, orders)):
                try:
                    snapshots.advance(T)
                except duckdb.ConversionException as exc:  # a running sum outgrew _EXACT
                    raise ValueError(f"{lake.root}: a running sum for the {T} snapshot is out of range "
                                     f"({str(exc).splitlines()[0]}); feature sums keep up to 10^12 per customer. "
                                     "Check the events' revenue and quantity columns for unit errors.") from None
                path = sub / f"{T.isoformat()}.parquet"
                # zstd: a quarter smaller than the default snappy, for about the same time (change rows compress
                # less than full snapshots, whose idle customers' rows were alike)
                con.execute(f"COPY ({snapshots.changes(grid.format(T=T), T)}{order}) TO '{path}' "
                            "(FORMAT parquet, COMPRESSION zstd)")
                rows[i] += con.execute(f"SELECT count(*) FROM '{path}'").fetchone()[0]
                crash_point("features_snapshot")
            advance(f"snapshot {T}")
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

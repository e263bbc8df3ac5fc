"""`propel ingest RAW_DIR`: validate, clean and append raw files to the unified lake.

Every input row ends in exactly one of: accepted (lake), quarantined (with a reason code), or
removed as a duplicate; the manifest proves `input = accepted + quarantined + duplicates` per table.
File-level errors (unreadable file, missing required column) stop the load before anything is
written, naming the file and column. Files already ingested (same SHA-256) are skipped, so
re-running a load changes nothing; new files append only themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from propel.lake import identity
from propel.lake.tombstones import tombstone_sql
from propel.lake.tables import LAKE_TYPES, Lake
from propel.lake.schema import (
    BLOCKED_VALUE_PATTERN, CLICK_EVENT_TYPES, PII_COLUMNS, PII_TYPES, TABLES, Column, Table,
    normalize_column, quote_ident, table_for_file,
)
from propel.config import Settings, Workspace
from propel.progress import steps

log = logging.getLogger(__name__)
# Ingest order matters only for readability of the manifest; identity resolution runs after all.
TABLE_ORDER = ("customers", "items", "campaigns", "identities", "events", "campaign_touches", "labels")
# Timestamp columns that may legitimately lie in the future (a scheduled campaign).
FUTURE_OK = {("campaigns", "start_at"), ("campaigns", "end_at")}
# Events per partitioned COPY: bounds the memory of writing a large load (about 250 MB per million).
EVENT_BATCH_ROWS = 2_500_000


class IngestError(Exception):
    """A problem with an input file that the user must fix; the message says where and how."""


@dataclass
class TableCounts:
    input: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    forgotten: int = 0  # rows about people who asked to be forgotten (`propel forget`)
    reasons: dict[str, int] = field(default_factory=dict)

    def reconciles(self) -> bool:
        return self.input == self.accepted + self.quarantined + self.duplicates + self.forgotten


@dataclass
class IngestReport:
    load_id: str | None
    files: list[dict]
    skipped_files: list[str]
    tables: dict[str, TableCounts]
    identity: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.load_id is None:
            return f"nothing new: {len(self.skipped_files)} file(s) already ingested ({self.seconds:.1f}s)"
        t = self.tables
        parts = [f"{n} {c.accepted:,}/{c.input:,}" for n, c in t.items()]
        q = sum(c.quarantined for c in t.values())
        d = sum(c.duplicates for c in t.values())
        return (f"load {self.load_id}: accepted {', '.join(parts)}; quarantined {q:,}, duplicates removed "
                f"{d:,}; {self.identity.get('customers', 0):,} customers resolved ({self.seconds:.1f}s)")


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def discover(raw_dir: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Raw files by table; folders starting with `_` or `.` (e.g. generator ground truth) are skipped."""
    if not raw_dir.is_dir():
        raise IngestError(f"{raw_dir}: not a directory. Pass the folder holding the raw CSV/Parquet files.")
    found: dict[str, list[Path]] = {}
    unknown: list[str] = []
    for path in sorted(raw_dir.rglob("*")):
        rel = path.relative_to(raw_dir)
        if not path.is_file() or any(p.startswith(("_", ".")) for p in rel.parts):
            continue
        table = table_for_file(path.name)
        if table is None:
            unknown.append(str(rel))
        else:
            found.setdefault(table, []).append(path)
    return found, unknown


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _hash_sql(expr: str, kind_expr: str, salt: str) -> str:
    """Salted SHA-256 of a normalised phone/email; `kind_expr` is 'phone' or 'email' (SQL)."""
    norm = (f"CASE WHEN {kind_expr} = 'phone' THEN regexp_replace({expr}, '[^0-9]', '', 'g') "
            f"ELSE lower(trim({expr})) END")
    return f"CASE WHEN nullif(trim({expr}), '') IS NULL THEN NULL ELSE sha256({_sql_str(salt)} || {norm}) END"


def hash_pii(kind: str, value: str, salt: str) -> str:
    """The Python twin of `_hash_sql`, for tests and lookups of a known phone/email."""
    norm = "".join(ch for ch in value if ch.isdigit()) if kind == "phone" else value.strip().lower()
    return hashlib.sha256((salt + norm).encode()).hexdigest()


def _lake_column(col: Column, present: set[str]) -> str:
    """The typed lake column for a contract column, with its default when missing."""
    value = quote_ident(col.name) if col.name in present else "NULL"
    if col.default is not None:
        value = f"coalesce({value}, {col.default})"
    return f"CAST({value} AS {LAKE_TYPES[col.kind]}) AS {quote_ident(col.name)}"


class _Loader:
    """One ingestion run: reads files into typed staging tables, then writes the lake."""

    def __init__(self, ws: Workspace, settings: Settings, raw_dir: Path, now: datetime):
        self.ws, self.settings, self.raw_dir = ws, settings, raw_dir
        self.lake = Lake(ws)
        self.con = self.lake.connect()
        self.salt = ws.salt()
        self.now = now.astimezone(timezone.utc).replace(tzinfo=None)
        self.warnings: list[str] = []

    # ---- reading -------------------------------------------------------------------------------
    def _file_select(self, path: Path, table: Table) -> tuple[str, set[str]]:
        """SELECT of one file with contract column names, all VARCHAR, PII hashed, `_file`/`_row`;
        and the (normalised) columns it has."""
        rel = str(path.relative_to(self.raw_dir))
        src = (f"read_parquet({_sql_str(str(path))})" if path.name.lower().endswith(".parquet")
               else f"read_csv({_sql_str(str(path))}, all_varchar=true, header=true, auto_detect=true)")
        try:
            names = [r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
        except duckdb.OutOfMemoryException:
            raise  # not the file's fault; the CLI explains the memory setting
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise IngestError(f"{rel}: cannot read as {table.name} ({first}). Fix: check the file is a "
                              "valid CSV with a header row, or Parquet.") from None
        by_norm: dict[str, str] = {}
        for name in names:
            norm = normalize_column(name)
            if norm in by_norm:
                raise IngestError(f"{rel}: columns '{by_norm[norm]}' and '{name}' both mean '{norm}'. "
                                  "Fix: rename or drop one of them.")
            by_norm[norm] = name
        missing = [c for c in table.required if c not in by_norm]
        if missing:
            raise IngestError(f"{rel}: missing required column '{missing[0]}' for table '{table.name}' "
                              f"(found: {', '.join(names)}). Fix: add or rename the column; see docs/data-contract.md.")
        if table.identified and "customer_id" not in by_norm and not {"identity_type", "identity_value"} <= set(by_norm):
            raise IngestError(f"{rel}: table '{table.name}' needs either 'customer_id' or both 'identity_type' "
                              "and 'identity_value' to say who each row is about. Fix: add those columns.")
        known = {c.name for c in table.columns}
        extras = [n for n in by_norm if n not in known]
        if extras and not table.passthrough and table.name != "events":
            self.warnings.append(f"{rel}: ignored unknown column(s) {', '.join(extras)} for table '{table.name}'")
        cols = []
        for norm, orig in by_norm.items():
            if norm in known or table.passthrough or table.name == "events":
                value = f"CAST({quote_ident(orig)} AS VARCHAR)"
                if norm in PII_COLUMNS:
                    kind = "'phone'" if "phone" in norm or "mobile" in norm or norm == "msisdn" else "'email'"
                    value = _hash_sql(value, kind, self.salt)
                cols.append(f"{value} AS {quote_ident(norm)}")
        for pair in (("identity_type", "identity_value"), ("linked_type", "linked_value")):
            if pair[0] in by_norm and pair[1] in by_norm:
                kind = f"lower(trim(CAST({quote_ident(by_norm[pair[0]])} AS VARCHAR)))"
                raw = f"CAST({quote_ident(by_norm[pair[1]])} AS VARCHAR)"
                cols = [c for c in cols if not c.endswith(f" AS {quote_ident(pair[1])}")]
                cols.append(f"CASE WHEN {kind} IN ({', '.join(map(_sql_str, sorted(PII_TYPES)))}) "
                            f"THEN {_hash_sql(raw, kind, self.salt)} ELSE {raw} END AS {quote_ident(pair[1])}")
        # row_number() OVER () is a streaming window, which DuckDB always runs in the file's order, so
        # row numbers stay right without `preserve_insertion_order` (which would stage files one by one).
        cols += [f"{_sql_str(rel)} AS _file", "row_number() OVER () AS _row"]
        kept = {n for n in by_norm if n in known or table.passthrough or table.name == "events"}
        return f"SELECT {', '.join(cols)} FROM {src}", kept

    # ---- validation ----------------------------------------------------------------------------
    @staticmethod
    def _parse(col: Column, text: str) -> str:
        """The typed value of `text`, a column's trimmed non-empty string (or NULL)."""
        return {
            "id": text,
            "string": text,
            "category": f"lower({text})",
            "timestamp": f"TRY_CAST({text} AS TIMESTAMPTZ)::TIMESTAMP",
            "float": f"TRY_CAST({text} AS DOUBLE)",
            "int": f"CASE WHEN TRY_CAST({text} AS DOUBLE) = floor(TRY_CAST({text} AS DOUBLE)) THEN TRY_CAST({text} AS BIGINT) END",
            "bool": (f"CASE WHEN lower({text}) IN ('true','t','yes','y','1') THEN true "
                     f"WHEN lower({text}) IN ('false','f','no','n','0') THEN false END"),
        }[col.kind]

    def _checks(self, table: Table, present: set[str]) -> list[tuple[str, str]]:
        """(SQL condition on the text `t_<column>` and typed `<column>` columns, reason code), first match wins."""
        future = self.now + timedelta(hours=self.settings.ingest.future_tolerance_hours)
        checks: list[tuple[str, str]] = []
        if table.identified:
            has_node = " OR ".join(
                [f"({quote_ident(a)} IS NOT NULL AND {quote_ident(b)} IS NOT NULL)" for a, b in [("identity_type", "identity_value")]
                 if {a, b} <= present] + (['"customer_id" IS NOT NULL'] if "customer_id" in present else [])) or "false"
            checks.append((f"NOT ({has_node})", "missing_identity"))
        for col in table.columns:
            if col.name not in present:
                continue
            text, val = quote_ident("t_" + col.name), quote_ident(col.name)
            if col.required:
                checks.append((f"{text} IS NULL", f"missing_value:{col.name}"))
            if col.kind not in ("id", "string", "category"):  # the only kinds whose parsing can fail
                checks.append((f"{text} IS NOT NULL AND {val} IS NULL", f"bad_{col.kind}:{col.name}"))
            if col.allowed:
                allowed = ", ".join(map(_sql_str, col.allowed))
                checks.append((f"{val} IS NOT NULL AND CAST({val} AS VARCHAR) NOT IN ({allowed})",
                               f"not_allowed:{col.name}"))
            if col.nonnegative:
                checks.append((f"{val} < 0", f"negative_value:{col.name}"))
            if col.kind == "timestamp" and (table.name, col.name) not in FUTURE_OK:
                checks.append((f"{val} > TIMESTAMP '{future:%Y-%m-%d %H:%M:%S}'", f"future_timestamp:{col.name}"))
            if col.name in ("identity_value", "linked_value", "customer_id"):
                checks.append((f"regexp_matches({val}, {_sql_str(BLOCKED_VALUE_PATTERN)}, 'i')",
                               f"placeholder_value:{col.name}"))
        return checks

    def _stage(self, table: Table, files: list[Path]) -> set[str]:
        """Read, parse and validate all files of a table into `stage` (typed, with `_reason` and, for
        rejected rows, the raw row as JSON), in one pass. Each value is trimmed once, into `t_<column>`,
        which both parsing and the checks read."""
        selects = [self._file_select(p, table) for p in files]
        present = set().union(*(cols for _, cols in selects))
        union = " UNION ALL BY NAME ".join(f"({sql})" for sql, _ in selects)
        known = [c for c in table.columns if c.name in present]
        extras = sorted(present - {c.name for c in known})
        reason = "CASE " + " ".join(f"WHEN {cond} THEN {_sql_str(code)}" for cond, code in self._checks(table, present)) + " END"
        raw_json = "to_json(struct_pack(" + ", ".join(f"{quote_ident(c)} := {quote_ident('r_' + c)}" for c in sorted(present)) + "))"
        texts = [quote_ident("t_" + c.name) for c in known]
        parsed = [f"{self._parse(c, t)} AS {quote_ident(c.name)}" for c, t in zip(known, texts)]
        if table.identified:  # downstream SQL can rely on all identifier columns existing
            parsed += [f"NULL::VARCHAR AS {c}" for c in ("identity_type", "identity_value", "customer_id") if c not in present]
        keep = [quote_ident(c) for c in extras] if table.passthrough else []
        if extras and table.name == "events":
            keep.append("to_json(struct_pack(" + ", ".join(f"{quote_ident(c)} := {quote_ident(c)}" for c in extras) + ")) AS extra")
        raws = [quote_ident("r_" + c) for c in sorted(present)]
        raw_cols = [f"{quote_ident(c)} AS {r}" for c, r in zip(sorted(present), raws)]
        trimmed = [f"nullif(trim({quote_ident(c.name)}), '') AS {t}" for c, t in zip(known, texts)]
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE stage AS SELECT * EXCLUDE ({', '.join(raws + texts)}), "
            f"CASE WHEN _reason IS NOT NULL THEN {raw_json} END AS _raw, NULL::VARCHAR AS _dup FROM ("
            f"SELECT *, {reason} AS _reason FROM ("
            f"SELECT {', '.join(parsed + keep + raw_cols + texts)}, _file, _row FROM ("
            f"SELECT *, {', '.join(trimmed)} FROM ({union}))))"
        )
        return present

    def _infer_passthrough(self, table: Table, present: set[str]) -> list[str]:
        """Typed SELECT items for extra CRM columns: BIGINT, DOUBLE or BOOLEAN when every value fits."""
        items = []
        for col in sorted(present - {c.name for c in table.columns}):
            q = quote_ident(col)
            v = f"nullif(trim({q}), '')"
            row = self.con.execute(
                f"SELECT count({v}), count(CASE WHEN regexp_matches({v}, '^[+-]?[0-9]{{1,18}}$') THEN 1 END), count(TRY_CAST({v} AS DOUBLE)), "
                f"count(CASE WHEN lower({v}) IN ('true','false') THEN 1 END) FROM stage WHERE _reason IS NULL"
            ).fetchone()
            n, n_int, n_float, n_bool = row
            target = ("VARCHAR" if n == 0 else "BIGINT" if n_int == n else "DOUBLE" if n_float == n
                      else "BOOLEAN" if n_bool == n else "VARCHAR")
            items.append(f"CAST({v} AS {target}) AS {q}")
        return items

    # ---- cleaning ------------------------------------------------------------------------------
    def _dedupe(self, table: Table, present: set[str]) -> None:
        """Flag valid rows: `_dup` = exact_duplicate | duplicate_key | already_in_lake, and for events,
        click bursts faster than a human become `_reason = 'bot_burst'`. Each window sees only a row id
        and the columns it needs, of only the rows it can flag, and its result updates `stage` by row
        id: windows over all columns of all rows were most of the load time and memory."""
        data = [quote_ident(c[0]) for c in self.con.execute("DESCRIBE stage").fetchall()
                if c[0] not in ("_file", "_row", "_reason", "_raw", "_dup")]
        valid = "_reason IS NULL"
        # The first row of a key wins for events, the last row for records (the newest version); a
        # table without a key only drops exact copies (same row hash `_h`).
        key = ", ".join(("event_id",) if table.name == "events" else table.key) or "_h"
        order = "DESC" if table.key else "ASC"
        rows = f"SELECT rowid AS _rid, *, hash({', '.join(data)}) AS _h FROM stage WHERE {valid}"
        self.con.execute(f"""
            UPDATE stage SET _dup = d._dup FROM (
              SELECT _rid, CASE WHEN _h = first_value(_h) OVER w THEN 'exact_duplicate' ELSE 'duplicate_key' END AS _dup
              FROM ({rows}) SEMI JOIN (SELECT {key} FROM ({rows}) GROUP BY ALL HAVING count(*) > 1) USING ({key})
              WINDOW w AS (PARTITION BY {key} ORDER BY _file {order}, _row {order})
              QUALIFY row_number() OVER w > 1) d
            WHERE stage.rowid = d._rid""")
        if table.name != "events":
            return
        if self.lake.files("events"):
            self.con.execute(f"UPDATE stage SET _dup = 'already_in_lake' WHERE {valid} "
                             f"AND event_id IN (SELECT event_id FROM {self.lake.scan('events')})")
        s = self.settings.ingest
        win = f"INTERVAL {float(s.bot_burst_seconds)} SECOND"
        clicks = ", ".join(map(_sql_str, sorted(CLICK_EVENT_TYPES)))
        self.con.execute(f"""
            UPDATE stage SET _reason = 'bot_burst',
              _raw = to_json(struct_pack(event_id, ts, identity_type, identity_value, channel, event_type))
            WHERE rowid IN (
              SELECT _rid FROM (
                SELECT rowid AS _rid, ts, coalesce(identity_type, 'customer_id') AS _t,
                       coalesce(identity_value, customer_id) AS _v
                FROM stage WHERE {valid} AND _dup IS NULL AND event_type IN ({clicks}))
              WINDOW before_ AS (PARTITION BY _t, _v ORDER BY ts RANGE BETWEEN {win} PRECEDING AND CURRENT ROW),
                     after_ AS (PARTITION BY _t, _v ORDER BY ts RANGE BETWEEN CURRENT ROW AND {win} FOLLOWING)
              QUALIFY greatest(count(*) OVER before_, count(*) OVER after_) >= {int(s.bot_burst_events)})""")

    def _drop_forgotten(self, table: Table, present: set[str]) -> None:
        """Rows naming a tombstoned identifier are dropped before they reach the lake or quarantine."""
        nodes = []
        if {"identity_type", "identity_value"} <= present:
            nodes.append(("identity_type", "identity_value"))
        if {"linked_type", "linked_value"} <= present:
            nodes.append(("linked_type", "linked_value"))
        if "customer_id" in present:
            nodes.append(("'customer_id'", "customer_id"))
        if not nodes or not self.lake.ws.tombstones.exists():
            return
        hit = " OR ".join(f"sha256({t} || ':' || {v}) IN (SELECT key FROM {tombstone_sql(self.lake)})" for t, v in nodes)
        self.con.execute(f"UPDATE stage SET _dup = 'forgotten' WHERE {hit}")

    # ---- writing -------------------------------------------------------------------------------
    def _write(self, table: Table, present: set[str], load_id: str) -> TableCounts:
        counts = TableCounts(*self.con.execute(
            "SELECT count(*), count(*) FILTER (_reason IS NULL AND _dup IS NULL), "
            "count(*) FILTER (_reason IS NOT NULL AND _dup IS NULL), count(*) FILTER (_dup <> 'forgotten'), "
            "count(*) FILTER (_dup = 'forgotten') FROM stage"
        ).fetchone())
        counts.reasons = dict(self.con.execute(
            "SELECT coalesce(_dup, _reason), count(*) FROM stage WHERE _reason IS NOT NULL OR _dup IS NOT NULL "
            "GROUP BY 1 ORDER BY 1").fetchall())
        node_cols = ("identity_type", "identity_value", "customer_id") if table.identified else ()
        select = [_lake_column(c, present) for c in table.columns if c.name not in node_cols]
        if table.identified:
            has = {c for c in ("identity_type", "identity_value", "customer_id") if c in present}
            itype = "identity_type" if "identity_type" in has else "NULL"
            ival = "identity_value" if "identity_value" in has else "NULL"
            cid = "customer_id" if "customer_id" in has else "NULL::VARCHAR"
            select += [f"CASE WHEN {itype} IS NOT NULL AND {ival} IS NOT NULL THEN {itype} ELSE 'customer_id' END AS identity_type",
                       f"CASE WHEN {itype} IS NOT NULL AND {ival} IS NOT NULL THEN {ival} ELSE {cid} END AS identity_value",
                       f"{cid} AS source_customer_id"]
        if table.passthrough:
            select += self._infer_passthrough(table, present)
        if table.name == "events":
            select.append("extra" if "extra" in {r[0] for r in self.con.execute("DESCRIBE stage").fetchall()}
                          else "NULL::VARCHAR AS extra")
        select.append(f"{_sql_str(load_id)} AS _load")
        accepted = f"SELECT {', '.join(select)} FROM stage WHERE _reason IS NULL AND _dup IS NULL"
        if counts.accepted:
            out = self.lake.table_dir(table.name)
            out.mkdir(parents=True, exist_ok=True)
            if table.name == "events":
                self._write_events(accepted, out, load_id)
            else:
                self.con.execute(f"COPY ({accepted}) TO {_sql_str(str(out / (load_id + '.parquet')))} (FORMAT parquet)")
        if counts.quarantined:
            qdir = self.lake.table_dir("quarantine")
            qdir.mkdir(parents=True, exist_ok=True)
            self.con.execute(
                f"COPY (SELECT {_sql_str(table.name)} AS \"table\", _file AS file, _row AS row, _reason AS reason, "
                f"_raw AS raw, {_sql_str(load_id)} AS _load FROM stage WHERE _reason IS NOT NULL AND _dup IS NULL "
                f"ORDER BY _file, _row) TO {_sql_str(str(qdir / f'{load_id}_{table.name}.parquet'))} (FORMAT parquet)"
            )
        self.con.execute("DROP TABLE stage")
        return counts

    def _write_events(self, accepted: str, out: Path, load_id: str) -> None:
        """Events go to one folder per UTC event date. A partitioned COPY holds all its rows in memory
        until it ends (or spills them, past DuckDB's memory limit), so the days are written in batches
        of about `EVENT_BATCH_ROWS` rows."""
        dated = f"SELECT *, CAST(ts AS DATE) AS event_date FROM ({accepted})"
        batches: list[list] = [[]]
        rows = 0
        for day, n in self.con.execute(f"SELECT event_date, count(*) FROM ({dated}) GROUP BY 1 ORDER BY 1").fetchall():
            if rows >= EVENT_BATCH_ROWS:
                batches.append([])
                rows = 0
            batches[-1].append(day)
            rows += n
        for days in batches:
            self.con.execute(f"COPY (SELECT * FROM ({dated}) WHERE event_date BETWEEN DATE '{days[0]}' AND DATE '{days[-1]}') "
                             f"TO {_sql_str(str(out))} (FORMAT parquet, PARTITION_BY (event_date), APPEND, "
                             f"FILENAME_PATTERN '{load_id}_{{uuid}}')")

    def load_table(self, table: Table, files: list[Path], load_id: str) -> TableCounts:
        present = self._stage(table, files)
        self._dedupe(table, present)
        self._drop_forgotten(table, present)
        counts = self._write(table, present, load_id)
        if not counts.reconciles():  # an invariant of the SQL above; a failure here is our bug
            raise AssertionError(f"{table.name}: counts do not reconcile: {counts}")
        return counts


def ingest(raw_dir: Path, ws: Workspace, now: datetime | None = None, progress: bool = False) -> IngestReport:
    """Ingest the new files of `raw_dir` into the workspace lake, then re-resolve identities."""
    started = time.perf_counter()
    settings = ws.settings()
    raw_dir = Path(raw_dir).resolve()
    by_table, unknown = discover(raw_dir)
    lake = Lake(ws)
    seen = {f["sha256"] for m in lake.manifests() for f in m["files"]}
    new: dict[str, list[Path]] = {}
    files, skipped = [], []
    for table, paths in by_table.items():
        for path in paths:
            digest = sha256_file(path)
            rel = str(path.relative_to(raw_dir))
            if digest in seen:
                skipped.append(rel)
                continue
            seen.add(digest)
            new.setdefault(table, []).append(path)
            files.append({"path": rel, "table": table, "sha256": digest, "bytes": path.stat().st_size})
    warnings = [f"{u}: file name matches no table ({', '.join(TABLES)}); skipped" for u in unknown]
    if not new:
        if not by_table:
            raise IngestError(f"{raw_dir}: no raw files found. Expected CSV/Parquet files named after a table "
                              f"({', '.join(TABLES)}), e.g. events_2024-01.csv.")
        return IngestReport(None, [], skipped, {}, {}, time.perf_counter() - started, warnings)

    load_id = f"L{len(lake.manifests()) + 1:06d}"
    loader = _Loader(ws, settings, raw_dir, now or datetime.now(timezone.utc))
    # Validate headers of every file first so a bad file stops the load before anything is written.
    for table_name, paths in new.items():
        for path in paths:
            loader._file_select(path, TABLES[table_name])
    timings: dict[str, float] = {}
    tables: dict[str, TableCounts] = {}
    order = [t for t in TABLE_ORDER if t in new]
    with steps(progress, "ingest", len(order) + 1) as advance:
        for table_name in order:
            t0 = time.perf_counter()
            tables[table_name] = loader.load_table(TABLES[table_name], new[table_name], load_id)
            timings[table_name] = round(time.perf_counter() - t0, 3)
            advance(f"{table_name}: {tables[table_name].accepted:,} rows")
        t0 = time.perf_counter()
        id_report = identity.resolve(lake, settings.identity, load_id, con=loader.con)
        timings["identity_resolution"] = round(time.perf_counter() - t0, 3)
        advance("identities resolved")
    seconds = time.perf_counter() - started
    report = IngestReport(load_id, files, skipped, tables, id_report, seconds, warnings + loader.warnings)
    manifest = {
        "load_id": load_id, "raw_dir": str(raw_dir), "started_at": datetime.now(timezone.utc).isoformat(),
        "files": files, "tables": {k: asdict(v) for k, v in tables.items()}, "identity": id_report,
        "timings_s": timings, "seconds": round(seconds, 3), "warnings": report.warnings,
    }
    lake.manifests_dir.mkdir(parents=True, exist_ok=True)
    (lake.manifests_dir / f"{load_id}.json").write_text(json.dumps(manifest, indent=2, default=str))
    return report

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
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from propel.lake import identity
from propel.lake.tombstones import tombstone_sql
from propel.lake.tables import LAKE_TYPES, Lake, LakeBusy, crash_point
from propel.lake.schema import (
    BLOCKED_VALUE_PATTERN, CLICK_EVENT_TYPES, EMAIL_PATTERN, IDENTITY_TYPE_ALIASES, MISSING_TOKENS, PHONE_PATTERN,
    PII_TYPES, TABLES, Column, Table, normalize_column, pii_kind, quote_ident, quote_literal, table_for_file,
)
from propel.config import Settings, Workspace
from propel.progress import steps

log = logging.getLogger(__name__)
# Ingest order matters only for readability of the manifest; identity resolution runs after all.
TABLE_ORDER = ("customers", "items", "campaigns", "identities", "events", "campaign_touches", "labels")
# Timestamp columns that may legitimately lie in the future (a scheduled campaign).
FUTURE_OK = {("campaigns", "start_at"), ("campaigns", "end_at")}
# Money as exported by spreadsheets and CRMs: `$1,234.50`, `1234.5 EUR`, `-€12`; group 1-4 = the number.
CURRENCY_RE = r"^(-?)\s*(?:[A-Za-z]{3}\s?)?[$€£¥]?\s?(-?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(\.[0-9]+)?\s?(?:[$€£¥]|[A-Za-z]{3})?$"
# How a value was read when it was not in the canonical form: (name, SQL condition on text `{t}`) per kind.
COERCIONS = {
    "bool": [("yes/no", "lower({t}) IN ('yes', 'no', 'y', 'n')"), ("1/0", "{t} IN ('1', '0')")],
    "timestamp": [("YYYYMMDD", "regexp_full_match({t}, '[0-9]{{8}}')")],
    "float": [("currency or thousands separators", "TRY_CAST({t} AS DOUBLE) IS NULL")],
    "int": [("currency or thousands separators", "TRY_CAST({t} AS DOUBLE) IS NULL")],
}
MISSING_FORM = "empty or NA read as missing"
# Contract columns whose values are parsed or checked against a list: an email or phone there can only
# reach the quarantine, so only the quarantine's copy is scrubbed (scanning every timestamp costs).
CHECKED_KINDS = {t.name: {c.name for c in t.columns if c.kind in ("timestamp", "float", "int", "bool", "category")
                          and not pii_kind(c.name)} for t in TABLES.values()}
# Extra (CRM) column names that say a YYYYMMDD number is a date.
DATE_NAME_RE = r"(date|dob|birth|_at$|_on$|day$)"
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
    coercions: dict[str, dict] = field(default_factory=dict)  # column -> how many values were read how

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
            skipped = f": {len(self.skipped_files)} file(s) already ingested" if self.skipped_files else ""
            return f"nothing new{skipped} ({self.seconds:.1f}s)"
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


def _hash_sql(expr: str, kind_expr: str, salt: str) -> str:
    """Salted SHA-256 of a normalised phone/email; `kind_expr` is 'phone' or 'email' (SQL)."""
    norm = (f"CASE WHEN {kind_expr} = 'phone' THEN regexp_replace({expr}, '[^0-9]', '', 'g') "
            f"ELSE lower(trim({expr})) END")
    return f"CASE WHEN nullif(trim({expr}), '') IS NULL THEN NULL ELSE sha256({quote_literal(salt)} || {norm}) END"


def _scrub_sql(expr: str, salt: str) -> str:
    """`expr` with PII found by content hashed: a whole value that is an email or a phone, and every
    email or phone inside a longer text (a note, a URL, a JSON blob). Cheap tests come first."""
    s = quote_literal(salt)
    email, phone = quote_literal(EMAIL_PATTERN), quote_literal(PHONE_PATTERN)

    def digits(x: str) -> str:
        return f"regexp_replace({x}, '[^0-9]', '', 'g')"

    def is_phone(x: str) -> str:  # 10-15 digits, and not a plain number
        return f"length({digits(x)}) BETWEEN 10 AND 15 AND NOT regexp_full_match({x}, '[0-9]+([.][0-9]+)?')"

    def hashed(x: str) -> str:
        return f"sha256({s} || CASE WHEN contains({x}, '@') THEN lower({x}) ELSE {digits(x)} END)"

    v = f"trim({expr})"
    found = (f"list_filter(regexp_extract_all({expr}, {email}) || regexp_extract_all({expr}, {phone}), "
             f"lambda m: contains(m, '@') OR ({is_phone('m')}))")
    return (f"CASE WHEN NOT (contains({expr}, '@') OR regexp_matches({expr}, '[0-9][0-9 ().-]{{10,}}[0-9]')) THEN {expr} "
            f"WHEN regexp_full_match({v}, {email}) OR (regexp_full_match({v}, {phone}) AND {is_phone(v)}) THEN {hashed(v)} "
            f"ELSE list_reduce(list_prepend({expr}, {found}), lambda acc, m: replace(acc, m, {hashed('m')})) END")


def _identity_type_sql(expr: str) -> str:
    """An identifier type with its aliases (`e-mail`, `phone_num`) read as the canonical type."""
    norm = f"trim(regexp_replace(lower({expr}), '[^0-9a-z]+', '_', 'g'), '_')"
    cases = " ".join(f"WHEN {norm} = {quote_literal(a)} THEN {quote_literal(t)}" for a, t in IDENTITY_TYPE_ALIASES.items())
    return f"CASE {cases} ELSE {expr} END"


def hash_pii(kind: str, value: str, salt: str) -> str:
    """The Python twin of `_hash_sql`, for tests and lookups of a known phone/email."""
    norm = "".join(ch for ch in value if ch.isdigit()) if kind == "phone" else value.strip().lower()
    return hashlib.sha256((salt + norm).encode()).hexdigest()


def _lake_column(col: Column, value: str) -> str:
    """The typed lake column for a contract column from SQL `value`, with its default when missing."""
    if col.default is not None:
        value = f"coalesce({value}, {col.default})"
    return f"CAST({value} AS {LAKE_TYPES[col.kind]}) AS {quote_ident(col.name)}"


class _Loader:
    """One ingestion run inside a lake transaction: reads files into typed staging tables, then writes
    the pending version's files."""

    def __init__(self, lake: Lake, settings: Settings, raw_dir: Path, now: datetime,
                 con: duckdb.DuckDBPyConnection | None = None):
        self.settings, self.raw_dir, self.lake = settings, raw_dir, lake
        self.con = con or self.lake.connect()
        self.salt = lake.ws.salt()
        self.now = now.astimezone(timezone.utc).replace(tzinfo=None)
        self.warnings: list[str] = []

    # ---- reading -------------------------------------------------------------------------------
    def _source(self, path: Path) -> str:
        if path.name.lower().endswith(".parquet"):
            return f"read_parquet({quote_literal(str(path))})"
        # A malformed row (wrong field count, bad quoting or encoding) is set aside for the quarantine
        # instead of failing the file, and cannot mislead the dialect sniffer.
        return f"read_csv({quote_literal(str(path))}, all_varchar=true, header=true, auto_detect=true, store_rejects=true)"

    def _file_select(self, path: Path, table: Table) -> tuple[str, set[str]]:
        """SELECT of one file with contract column names, all VARCHAR, PII hashed, `_file`/`_row`;
        and the (normalised) columns it has."""
        return self._select(self._source(path), str(path.relative_to(self.raw_dir)), table)

    def _select(self, src: str, rel: str, table: Table, hashed: bool = False,
                names: list[str] | None = None) -> tuple[str, set[str]]:
        """`_file_select` of any SQL source `src` (a file scan, or events held in memory), named `rel`;
        `hashed`: its PII is hashed already (events from the event log), so it is not hashed again;
        `names`: its columns, for a source DuckDB cannot describe (one read from query parameters)."""
        try:
            if names is None:
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
        kept = {n for n in by_norm if n in known or table.passthrough or table.name == "events"}
        values = {n: f"CAST({quote_ident(by_norm[n])} AS VARCHAR)" for n in kept}
        for norm in kept if not hashed else ():  # PII by name, else by content (checked kinds: see _stage)
            kind = pii_kind(norm)
            if kind:
                values[norm] = _hash_sql(values[norm], quote_literal(kind), self.salt)
            elif norm not in CHECKED_KINDS.get(table.name, ()):
                values[norm] = _scrub_sql(values[norm], self.salt)
        for kind_col, value_col in (("identity_type", "identity_value"), ("linked_type", "linked_value")):
            if kind_col in kept:
                kind = _identity_type_sql(f"CAST({quote_ident(by_norm[kind_col])} AS VARCHAR)")
                values[kind_col] = kind
                if value_col in kept and not hashed:
                    raw = f"CAST({quote_ident(by_norm[value_col])} AS VARCHAR)"
                    values[value_col] = (f"CASE WHEN lower(trim({kind})) IN ({', '.join(map(quote_literal, sorted(PII_TYPES)))}) "
                                         f"THEN {_hash_sql(raw, f'lower(trim({kind}))', self.salt)} ELSE {values[value_col]} END")
        cols = [f"{v} AS {quote_ident(n)}" for n, v in values.items()]
        # row_number() OVER () is a streaming window, which DuckDB always runs in the file's order, so
        # row numbers stay right without `preserve_insertion_order` (which would stage files one by one).
        cols += [f"{quote_literal(rel)} AS _file", "row_number() OVER () AS _row"]
        return f"SELECT {', '.join(cols)} FROM {src}", kept

    # ---- validation ----------------------------------------------------------------------------
    @staticmethod
    def _parse(kind: str, text: str) -> str:
        """The typed value of `text`, a column's trimmed non-empty string (or NULL)."""
        number = (f"coalesce(TRY_CAST({text} AS DOUBLE), CASE WHEN regexp_full_match({text}, {quote_literal(CURRENCY_RE)}) "
                  f"THEN TRY_CAST(replace(regexp_replace({text}, {quote_literal(CURRENCY_RE)}, '\\1\\2\\3\\4'), ',', '') AS DOUBLE) END)")
        return {
            "id": text,
            "string": text,
            "category": f"lower({text})",
            "timestamp": (f"CASE WHEN regexp_full_match({text}, '[0-9]{{8}}') THEN TRY_STRPTIME({text}, '%Y%m%d') "
                          f"ELSE TRY_CAST({text} AS TIMESTAMPTZ)::TIMESTAMP END"),
            "float": number,
            "int": f"coalesce(TRY_CAST({text} AS BIGINT), CASE WHEN {number} = floor({number}) THEN TRY_CAST({number} AS BIGINT) END)",
            "bool": (f"CASE WHEN lower({text}) IN ('true','t','yes','y','1') THEN true "
                     f"WHEN lower({text}) IN ('false','f','no','n','0') THEN false END"),
        }[kind]

    @staticmethod
    def _text(kind: str, raw: str) -> str:
        """The trimmed text of a raw value; NULL when empty, or for typed kinds when a missing token."""
        if kind in ("id", "string", "category"):
            return f"nullif(trim({raw}), '')"
        return f"CASE WHEN lower(trim({raw})) NOT IN ({', '.join(map(quote_literal, MISSING_TOKENS))}) THEN trim({raw}) END"

    def _future(self) -> str:
        """SQL TIMESTAMP after which a timestamp is `future_timestamp` (now plus the tolerance)."""
        return f"TIMESTAMP '{self.now + timedelta(hours=self.settings.ingest.future_tolerance_hours):%Y-%m-%d %H:%M:%S}'"

    def _checks(self, table: Table, present: set[str], future: str | None = None) -> list[tuple[str, str]]:
        """(SQL condition on the text `t_<column>` and typed `<column>` columns, reason code), first match wins;
        `future`: SQL of the future bound (default `self._future()`; a parameter in a statement prepared once)."""
        future = future or self._future()
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
                allowed = ", ".join(map(quote_literal, col.allowed))
                checks.append((f"{val} IS NOT NULL AND CAST({val} AS VARCHAR) NOT IN ({allowed})",
                               f"not_allowed:{col.name}"))
            if col.nonnegative:
                checks.append((f"{val} < 0", f"negative_value:{col.name}"))
            if col.kind == "timestamp" and (table.name, col.name) not in FUTURE_OK:
                checks.append((f"{val} > {future}", f"future_timestamp:{col.name}"))
            if col.name in ("identity_value", "linked_value", "customer_id"):
                checks.append((f"regexp_matches({val}, {quote_literal(BLOCKED_VALUE_PATTERN)}, 'i')",
                               f"placeholder_value:{col.name}"))
        return checks

    def _stage(self, table: Table, files: list[Path]) -> tuple[set[str], dict[str, dict]]:
        """Read, parse and validate all files of a table into `stage` (typed, with `_reason` and, for
        rejected rows, the raw row as JSON), in one pass; returns the columns present and, per
        typed column, how many values were coerced how. Each value is trimmed once, into `t_<column>`,
        which parsing, the checks and the coercion counts read."""
        selects = [self._file_select(p, table) for p in files]
        try:
            present, typed = self._stage_selects(table, selects)
        except duckdb.OutOfMemoryException:
            raise
        except duckdb.Error as exc:  # a file whose header read fine but whose body does not: say which
            failed, first = [str(p.relative_to(self.raw_dir)) for p in files], str(exc).strip().splitlines()[0]
            for (sql, _), path in zip(selects, files):
                try:
                    self.con.execute(f"CREATE OR REPLACE TEMP TABLE probe AS {sql}")
                except duckdb.Error as file_exc:
                    failed, first = [str(path.relative_to(self.raw_dir))], str(file_exc).strip().splitlines()[0]
                    break
            raise IngestError(f"{', '.join(failed)}: cannot read as {table.name} ({first}). Fix: re-export the "
                              "file; nothing of this load was written.") from None
        self._quarantine_malformed(table, files)
        coercions = self._count_coercions(typed)
        return present, coercions

    def _stage_selects(self, table: Table, selects: list[tuple[str, set[str]]]) -> tuple[set[str], list[Column]]:
        """`stage` from the SELECTs of `_select`; returns the columns present and the typed ones."""
        sql, present, typed = self._stage_sql(table, selects)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE stage AS {sql}")
        return present, typed

    def _stage_sql(self, table: Table, selects: list[tuple[str, set[str]]],
                   future: str | None = None) -> tuple[str, set[str], list[Column]]:
        """The query of `stage` (`future`: see `_checks`), the columns present and the typed ones."""
        present = set().union(*(cols for _, cols in selects))
        union = " UNION ALL BY NAME ".join(f"({sql})" for sql, _ in selects)
        known = [c for c in table.columns if c.name in present]
        typed = [c for c in known if c.kind in COERCIONS]
        extras = sorted(present - {c.name for c in known})
        reason = "CASE " + " ".join(f"WHEN {cond} THEN {quote_literal(code)}" for cond, code in self._checks(table, present, future)) + " END"
        checked = CHECKED_KINDS[table.name]
        raw_json = "to_json(struct_pack(" + ", ".join(
            f"{quote_ident(c)} := {_scrub_sql(quote_ident('r_' + c), self.salt) if c in checked else quote_ident('r_' + c)}"
            for c in sorted(present)) + "))"
        texts = [quote_ident("t_" + c.name) for c in known]
        parsed = [f"{self._parse(c.kind, t)} AS {quote_ident(c.name)}" for c, t in zip(known, texts)]
        if table.identified:  # downstream SQL can rely on all identifier columns existing
            parsed += [f"NULL::VARCHAR AS {c}" for c in ("identity_type", "identity_value", "customer_id") if c not in present]
        keep = [quote_ident(c) for c in extras] if table.passthrough else []
        if extras and table.name == "events":
            keep.append("to_json(struct_pack(" + ", ".join(f"{quote_ident(c)} := {quote_ident(c)}" for c in extras) + ")) AS extra")
        raws = [quote_ident("r_" + c) for c in sorted(present)]
        raw_cols = [f"{quote_ident(c)} AS {r}" for c, r in zip(sorted(present), raws)]
        trimmed = [f"{self._text(c.kind, quote_ident(c.name))} AS {t}" for c, t in zip(known, texts)]
        blanks = [f"{quote_ident(c.name)} IS NOT NULL AND {quote_ident('t_' + c.name)} IS NULL AS {quote_ident('e_' + c.name)}" for c in typed]
        drop = [t for c, t in zip(known, texts) if c not in typed] + raws
        sql = (f"SELECT * EXCLUDE ({', '.join(drop)}), "
               f"CASE WHEN _reason IS NOT NULL THEN {raw_json} END AS _raw, NULL::VARCHAR AS _dup FROM ("
               f"SELECT *, {reason} AS _reason FROM ("
               f"SELECT {', '.join(parsed + keep + raw_cols + texts + blanks)}, _file, _row FROM ("
               f"SELECT *, {', '.join(trimmed)} FROM ({union}))))")
        return sql, present, typed

    def _quarantine_malformed(self, table: Table, files: list[Path]) -> None:
        """CSV rows DuckDB set aside (wrong field count, bad quoting) join `stage` as quarantined
        `malformed_row`s, their line split into PII-scrubbed fields; other rows keep their true row number."""
        csvs = [str(p) for p in files if not p.name.lower().endswith(".parquet")]
        if not csvs:
            return
        prefix = len(str(self.raw_dir)) + 2
        self.con.execute(f"""
          CREATE OR REPLACE TEMP TABLE malformed AS
          SELECT substr(s.file_path, {prefix}) AS _file, e.line - 1 AS _row, any_value(e.csv_line) AS line,
                 any_value(e.error_message) AS error, any_value(s.delimiter) AS delim
          FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id)
          WHERE s.file_path IN ({', '.join(map(quote_literal, csvs))}) GROUP BY ALL""")
        if not self.con.execute("SELECT count(*) FROM malformed").fetchone()[0]:
            return
        # Good row r of a file is data row r + (number of malformed rows before it).
        self.con.execute("""
          UPDATE stage SET _row = stage._row + m.n FROM (
            SELECT s.rowid AS rid, count(*) AS n FROM stage s JOIN (
              SELECT _file, _row - row_number() OVER (PARTITION BY _file ORDER BY _row) AS good_before FROM malformed) g
            ON g._file = s._file AND g.good_before < s._row GROUP BY s.rowid) m
          WHERE stage.rowid = m.rid""")
        scrub = _scrub_sql("trim(f, ' \"')", self.salt)
        self.con.execute(f"""
          INSERT INTO stage BY NAME SELECT _file, _row, 'malformed_row' AS _reason,
            to_json(struct_pack(fields := list_transform(string_split(line, delim), lambda f: {scrub}), error := error)) AS _raw
          FROM malformed""")

    def _count_coercions(self, typed: list[Column]) -> dict[str, dict]:
        """Per typed column, how many values were read from a non-canonical form or as missing; drops
        the text columns kept for it."""
        if not typed:
            return {}
        items, names = [], []
        for col in typed:
            t, val = quote_ident("t_" + col.name), quote_ident(col.name)
            for form, cond in COERCIONS[col.kind]:
                items.append(f"count(*) FILTER ({val} IS NOT NULL AND {cond.format(t=t)})")
                names.append((col.name, form))
            items.append(f"count(*) FILTER ({quote_ident('e_' + col.name)})")
            names.append((col.name, MISSING_FORM))
        counts = self.con.execute(f"SELECT {', '.join(items)} FROM stage").fetchone()
        kinds = {c.name: c.kind for c in typed}
        out: dict[str, dict] = {}
        for (col, form), n in zip(names, counts):
            if n:
                out.setdefault(col, {"as": LAKE_TYPES[kinds[col]]})[form] = n
        for col in typed:
            self.con.execute(f"ALTER TABLE stage DROP COLUMN {quote_ident('t_' + col.name)}")
            self.con.execute(f"ALTER TABLE stage DROP COLUMN {quote_ident('e_' + col.name)}")
        return out

    def _infer_passthrough(self, table: Table, present: set[str], coercions: dict[str, dict]) -> list[str]:
        """Typed SELECT items (on `stage s`) for extra CRM columns: BIGINT, DOUBLE, BOOLEAN or TIMESTAMP
        when every value fits, VARCHAR otherwise; digit codes with a leading zero (zip `00501`) stay
        text. Records each column's type and coercions in `coercions`."""
        items = []
        for col in sorted(present - {c.name for c in table.columns}):
            q = quote_ident(col)
            v = self._text("float", q)
            checks = {
                "n": f"{v} IS NOT NULL",
                "code": f"regexp_full_match({v}, '[+-]?0[0-9]+')",
                "int": f"regexp_full_match({v}, '[+-]?[0-9]{{1,18}}')",
                "float": f"{self._parse('float', v)} IS NOT NULL",
                "bool": f"lower({v}) IN ('true', 'false', 't', 'f', 'yes', 'no', 'y', 'n')",
                "iso": f"NOT regexp_full_match({v}, '[0-9.+-]+') AND TRY_CAST({v} AS TIMESTAMPTZ) IS NOT NULL",
                "ymd": f"regexp_full_match({v}, '(19|20)[0-9]{{6}}') AND TRY_STRPTIME({v}, '%Y%m%d') IS NOT NULL",
                "blank": f"{q} IS NOT NULL AND {v} IS NULL",
            }
            row = self.con.execute(f"SELECT {', '.join(f'count(*) FILTER ({c})' for c in checks.values())} "
                                   "FROM stage WHERE _reason IS NULL").fetchone()
            c = dict(zip(checks, row))
            n = c["n"]
            ymd_ok = c["ymd"] == n and re.search(DATE_NAME_RE, col)
            kind = ("string" if n == 0 or c["code"] else "timestamp" if ymd_ok else "int" if c["int"] == n
                    else "float" if c["float"] == n
                    else "bool" if c["bool"] == n else "timestamp" if c["iso"] == n
                    else "string")
            forms = {"as": LAKE_TYPES[kind]}
            if c["code"] and c["int"] == n:
                forms["digit codes kept as text (leading zeros)"] = c["code"]
            if kind == "string":
                value = f"nullif(trim(s.{q}), '')"
            else:
                value = self._parse(kind, self._text(kind, f"s.{q}"))
                counts = self.con.execute(
                    "SELECT " + ", ".join(f"count(*) FILTER ({value} IS NOT NULL AND {cond.format(t=self._text(kind, f's.{q}'))})"
                                          for _, cond in COERCIONS[kind]) + f", count(*) FILTER ({checks['blank']}) "
                    "FROM stage s WHERE _reason IS NULL").fetchone()
                forms.update({form: n for (form, _), n in zip(COERCIONS[kind] + [(MISSING_FORM, "")], counts) if n})
            coercions[col] = forms
            items.append(f"CAST({value} AS {LAKE_TYPES[kind]}) AS {q}")
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
        clicks = ", ".join(map(quote_literal, sorted(CLICK_EVENT_TYPES)))
        anonymous = ", ".join(map(quote_literal, s.bot_burst_identities)) or "NULL"
        self.con.execute(f"""
            UPDATE stage SET _reason = 'bot_burst',
              _raw = to_json(struct_pack(event_id, ts, identity_type, identity_value, channel, event_type))
            WHERE rowid IN (
              SELECT _rid FROM (
                SELECT rowid AS _rid, ts, coalesce(identity_type, 'customer_id') AS _t,
                       coalesce(identity_value, customer_id) AS _v
                FROM stage WHERE {valid} AND _dup IS NULL AND event_type IN ({clicks})
                  AND customer_id IS NULL AND identity_type IN ({anonymous}))
              WINDOW before_ AS (PARTITION BY _t, _v ORDER BY ts RANGE BETWEEN {win} PRECEDING AND CURRENT ROW),
                     after_ AS (PARTITION BY _t, _v ORDER BY ts RANGE BETWEEN CURRENT ROW AND {win} FOLLOWING)
              QUALIFY greatest(count(*) OVER before_, count(*) OVER after_) >= {int(s.bot_burst_events)})""")

    def _drop_forgotten(self, table: Table, present: set[str]) -> None:
        """Rows naming a tombstoned identifier are dropped before they reach the lake or quarantine."""
        hit = self._forgotten(present)
        if hit:
            self.con.execute(f"UPDATE stage SET _dup = 'forgotten' WHERE {hit}")

    def _forgotten(self, present: set[str]) -> str | None:
        """SQL condition: the row names a tombstoned identifier; None when it cannot (nobody was forgotten)."""
        nodes = []
        if {"identity_type", "identity_value"} <= present:
            nodes.append(("identity_type", "identity_value"))
        if {"linked_type", "linked_value"} <= present:
            nodes.append(("linked_type", "linked_value"))
        if "customer_id" in present:
            nodes.append(("'customer_id'", "customer_id"))
        if not nodes or not self.lake.ws.tombstones.exists():
            return None
        return " OR ".join(f"sha256({t} || ':' || {v}) IN (SELECT key FROM {tombstone_sql(self.lake)})" for t, v in nodes)

    # ---- writing -------------------------------------------------------------------------------
    def _write(self, table: Table, present: set[str], load_id: str, coercions: dict[str, dict]) -> TableCounts:
        counts = TableCounts(*self.con.execute(
            "SELECT count(*), count(*) FILTER (_reason IS NULL AND _dup IS NULL), "
            "count(*) FILTER (_reason IS NOT NULL AND _dup IS NULL), count(*) FILTER (_dup <> 'forgotten'), "
            "count(*) FILTER (_dup = 'forgotten') FROM stage"
        ).fetchone())
        counts.reasons = dict(self.con.execute(
            "SELECT coalesce(_dup, _reason), count(*) FROM stage WHERE _reason IS NOT NULL OR _dup IS NOT NULL "
            "GROUP BY 1 ORDER BY 1").fetchall())
        # A keyed table's row keeps, for the columns its file lacks, the key's latest value in the lake.
        source = f"stage s LEFT JOIN {table.name}_latest p USING ({', '.join(table.key)})" if table.key else "stage s"
        before = ({r[0] for r in self.con.execute(f"DESCRIBE {table.name}_latest").fetchall()} - {"_load"}
                  if table.key else set())

        def value(name: str) -> str:
            return f"s.{quote_ident(name)}" if name in present else f"p.{quote_ident(name)}" if name in before else "NULL"

        node_cols = ("identity_type", "identity_value", "customer_id") if table.identified else ()
        select = [_lake_column(c, quote_ident(c.name) if c.name in table.key else value(c.name))
                  for c in table.columns if c.name not in node_cols]
        if table.identified:
            has = {c for c in ("identity_type", "identity_value", "customer_id") if c in present}
            itype = "identity_type" if "identity_type" in has else "NULL"
            ival = "identity_value" if "identity_value" in has else "NULL"
            cid = "customer_id" if "customer_id" in has else "NULL::VARCHAR"
            select += [f"CASE WHEN {itype} IS NOT NULL AND {ival} IS NOT NULL THEN {itype} ELSE 'customer_id' END AS identity_type",
                       f"CASE WHEN {itype} IS NOT NULL AND {ival} IS NOT NULL THEN {ival} ELSE {cid} END AS identity_value",
                       f"{cid} AS source_customer_id"]
        if table.passthrough:
            select += self._infer_passthrough(table, present, coercions)
            contract = {c.name for c in table.columns}
            select += [f"p.{quote_ident(c)}" for c in sorted(before - present - contract)]
        if table.name == "events":
            select.append("extra" if "extra" in {r[0] for r in self.con.execute("DESCRIBE stage").fetchall()}
                          else "NULL::VARCHAR AS extra")
        select.append(f"{quote_literal(load_id)} AS _load")
        accepted = f"SELECT {', '.join(select)} FROM {source} WHERE s._reason IS NULL AND s._dup IS NULL"
        if counts.accepted:
            if table.name == "events":
                self._write_events(accepted, load_id)
            else:
                path = self.lake.new_file(table.name, f"{load_id}.parquet")
                self.con.execute(f"COPY ({accepted}) TO {quote_literal(str(path))} (FORMAT parquet)")
                self.lake.add(table.name, [path])
        if counts.quarantined:
            path = self.lake.new_file("quarantine", f"{load_id}_{table.name}.parquet")
            self.con.execute(
                f"COPY (SELECT {quote_literal(table.name)} AS \"table\", _file AS file, _row AS row, _reason AS reason, "
                f"_raw AS raw, {quote_literal(load_id)} AS _load FROM stage WHERE _reason IS NOT NULL AND _dup IS NULL "
                f"ORDER BY _file, _row) TO {quote_literal(str(path))} (FORMAT parquet)"
            )
            self.lake.add("quarantine", [path])
        self.con.execute("DROP TABLE stage")
        counts.coercions = coercions
        return counts

    def _write_events(self, accepted: str, load_id: str) -> None:
        """Events go to one folder per UTC event date. A partitioned COPY holds all its rows in memory
        until it ends (or spills them, past DuckDB's memory limit), so the days are written in batches
        of about `EVENT_BATCH_ROWS` rows."""
        out = self.lake.table_dir("events")
        out.mkdir(parents=True, exist_ok=True)
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
                             f"TO {quote_literal(str(out))} (FORMAT parquet, PARTITION_BY (event_date), APPEND, "
                             f"FILENAME_PATTERN '{load_id}_{{uuid}}')")
        # The transaction started from a folder holding only committed files, so these are this load's.
        self.lake.add("events", sorted(out.glob(f"*/{load_id}_*.parquet")))

    def load_table(self, table: Table, files: list[Path], load_id: str) -> TableCounts:
        present, coercions = self._stage(table, files)
        return self.finish_table(table, present, load_id, coercions)

    def finish_table(self, table: Table, present: set[str], load_id: str, coercions: dict[str, dict]) -> TableCounts:
        """Deduplicate, drop the forgotten and write what is in `stage`; the counts reconcile."""
        self._dedupe(table, present)
        self._drop_forgotten(table, present)
        counts = self._write(table, present, load_id, coercions)
        if not counts.reconciles():  # an invariant of the SQL above; a failure here is our bug
            raise AssertionError(f"{table.name}: counts do not reconcile: {counts}")
        return counts


def ingest(raw_dir: Path, ws: Workspace, now: datetime | None = None, progress: bool = False) -> IngestReport:
    """Ingest the new files of `raw_dir` into the workspace lake, then re-resolve identities; one
    transaction: all of it becomes visible at once, or (on any error or crash) none of it."""
    started = time.perf_counter()
    raw_dir = Path(raw_dir).resolve()
    by_table, unknown = discover(raw_dir)
    if not by_table:
        raise IngestError(f"{raw_dir}: no raw files found. Expected CSV/Parquet files named after a table "
                          f"({', '.join(TABLES)}), e.g. events_2024-01.csv.")
    digests = {path: sha256_file(path) for paths in by_table.values() for path in paths}
    lake = Lake(ws)
    try:
        with lake.transaction("ingest"):
            return _load(lake, ws.settings(), raw_dir, by_table, digests, unknown, now, progress, started)
    except LakeBusy as exc:
        raise IngestError(str(exc)) from None


def _load(lake: Lake, settings: Settings, raw_dir: Path, by_table: dict[str, list[Path]], digests: dict[Path, str],
          unknown: list[str], now: datetime | None, progress: bool, started: float) -> IngestReport:
    seen = {f["sha256"] for m in lake.manifests() for f in m["files"]}
    new: dict[str, list[Path]] = {}
    files, skipped = [], []
    for table, paths in by_table.items():
        for path in paths:
            rel = str(path.relative_to(raw_dir))
            if digests[path] in seen:
                skipped.append(rel)
                continue
            seen.add(digests[path])
            new.setdefault(table, []).append(path)
            files.append({"path": rel, "table": table, "sha256": digests[path], "bytes": path.stat().st_size})
    warnings = [f"{u}: file name matches no table ({', '.join(TABLES)}); skipped" for u in unknown]
    if not new:
        return IngestReport(None, [], skipped, {}, {}, time.perf_counter() - started, warnings)

    load_id = f"L{len(lake.manifests()) + 1:06d}"
    loader = _Loader(lake, settings, raw_dir, now or datetime.now(timezone.utc))
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
            crash_point(f"after:{table_name}")
        t0 = time.perf_counter()
        id_report = identity.resolve(lake, settings.identity, load_id, con=loader.con)
        timings["identity_resolution"] = round(time.perf_counter() - t0, 3)
        advance("identities resolved")
        crash_point("after:identity")
    seconds = time.perf_counter() - started
    report = IngestReport(load_id, files, skipped, tables, id_report, seconds, warnings + loader.warnings)
    manifest = {
        "load_id": load_id, "raw_dir": str(raw_dir), "started_at": datetime.now(timezone.utc).isoformat(),
        "files": files, "tables": {k: asdict(v) for k, v in tables.items()}, "identity": id_report,
        "timings_s": timings, "seconds": round(seconds, 3), "warnings": report.warnings,
    }
    path = lake.new_file("manifests", f"{load_id}.json")
    path.write_text(json.dumps(manifest, indent=2, default=str))
    lake.add("manifests", [path])
    return report

"""The unified lake: Parquet tables written by ingestion, read through DuckDB views.

Layout under `<workspace>/data/lake/`:
  events/event_date=YYYY-MM-DD/<load>_<uuid>.parquet   behaviour, partitioned by UTC event date
  <table>/<load>.parquet                               every other contract table, one file per load
  quarantine/<load>_<table>.parquet                   rejected rows with a reason code
  identity_map/<version>.parquet                       identifier -> resolved customer_id
  identity_merges/<version>.parquet                    every merge of two known ids (audit trail)
  manifests/<load>.json                                what each load read, accepted, rejected, when
  _commits/<version>.json                              the commit log: which files make up each version
  _lock                                                held (flock) by the one process writing the lake

Transactions: a file is part of the lake only once a commit record lists it. A writer holds the
lock, writes new files under fresh names, fsyncs them, then commits by renaming one JSON record
into `_commits/` (atomic); a crash before that rename leaves only unlisted files, which the next
writer deletes, so readers always see a whole version. Readers take no lock: a `Lake` reads the
newest commit once and sees that version until it is re-opened.

Downstream code reads only the views of `Lake.connect()`: `events` and `campaign_touches` carry the
resolved `customer_id`; `customers`, `items`, `campaigns`, `labels` hold the latest row per key.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import signal
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from propel.lake.schema import TABLES, Table, quote_literal
from propel.config import Workspace

log = logging.getLogger(__name__)
LAKE_TYPES = {"id": "VARCHAR", "string": "VARCHAR", "category": "VARCHAR", "timestamp": "TIMESTAMP",
              "float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN"}
# Everything a commit lists, by folder: the contract tables and what ingestion writes next to them.
TRACKED = (*TABLES, "quarantine", "identity_map", "identity_merges", "manifests")
COMMITS, LOCK = "_commits", "_lock"
# The single files of a lake written before transactions (converted once, see `Lake._convert`).
LEGACY_FILES = {"identity_map": "identity_map.parquet", "identity_merges": "identity_merges.parquet"}


class Busy(Exception):
    """Another process holds a writer's lock; the message says which and what to do."""


class LakeBusy(Busy):
    """Another process is writing the lake."""


@contextmanager
def exclusive(path: Path, operation: str, refuse):
    """One writer at a time: an flock on `path` (freed when its process dies, `kill -9` included) that says who
    holds it; `refuse(holder)` is the exception raised at once when another process does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + 1.0
            while True:  # the holder writes who it is just after it locks
                fh.seek(0)
                holder = fh.read().strip()
                if holder or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            raise refuse(holder or "a process that has not said which") from None
        fh.truncate(0)
        fh.write(f"{operation}, pid {os.getpid()}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def crash_point(name: str) -> None:
    """Test hook: `PROPEL_CRASH_AT=<name>` kills the process here (SIGKILL), to prove crash safety."""
    if os.environ.get("PROPEL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lake:
    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.root = workspace.lake
        self.state = self._read_state()
        if self.state.get("legacy"):
            try:
                with self._lock("convert"):
                    self.state = self._read_state()
                    if self.state.get("legacy"):
                        self._convert()
            except LakeBusy:  # the writer holding the lock converts it
                log.warning("%s: lake written before transactions, read as it is (another process is writing)", self.root)

    # ---- the committed version -------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.state["version"]

    def versions(self) -> dict[str, int]:
        """The lake's version and, per table, the version that last changed it (for run logs)."""
        return {"lake": self.version, **self.state["table_versions"]}

    def _read_state(self) -> dict:
        if not (self.root / COMMITS).is_dir():  # made by the first transaction, before any file
            return self._legacy_state() if self._legacy_files() else _empty()
        for _ in range(5):  # a writer may prune the record just listed (it keeps the newest two)
            commits = sorted((self.root / COMMITS).glob("*.json"))
            try:
                return json.loads(commits[-1].read_text()) if commits else _empty()
            except FileNotFoundError:
                continue
        raise RuntimeError(f"{self.root / COMMITS}: the commit log changes faster than it can be read")

    def _legacy_files(self) -> dict[str, list[str]]:
        files = {t: sorted(str(p.relative_to(self.root)) for p in (self.root / t).rglob("*.parquet"))
                 for t in TRACKED if t != "manifests"}
        files["manifests"] = sorted(str(p.relative_to(self.root)) for p in (self.root / "manifests").glob("*.json"))
        for table, name in LEGACY_FILES.items():
            files[table] = [name] if (self.root / name).exists() else []
        return {t: f for t, f in files.items() if f}

    def _legacy_state(self) -> dict:
        """A lake written before transactions, as version 0: files of a load newer than the last manifest
        (an interrupted load) and unreadable (torn) files are left out."""
        files = self._legacy_files()
        loads = [Path(p).stem for p in files.get("manifests", [])]
        con = duckdb.connect()

        def keep(path: str) -> bool:
            name = Path(path).name
            if loads and name.startswith("L") and name[:7] > loads[-1]:
                return False
            try:
                con.execute(f"SELECT count(*) FROM parquet_metadata({quote_literal(str(self.root / path))})")
                return True
            except duckdb.Error:
                return False

        return {**_empty(), "legacy": True,
                "files": {t: [p for p in paths if t == "manifests" or keep(p)] for t, paths in files.items()}}

    def _convert(self) -> None:
        """Commit a legacy lake as version 1 (under the lock), deleting the files it left out."""
        total = sum(len(f) for f in self._legacy_files().values())
        self.state.pop("legacy")
        self._commit("convert", _empty())
        self._collect_garbage()
        left_out = total - sum(len(f) for f in self.state["files"].values())
        log.warning("lake %s: converted once to the transactional layout (version 1%s)", self.root,
                    f"; {left_out} file(s) of an interrupted load left out and deleted" if left_out else "")

    # ---- reading -------------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def files(self, table: str) -> list[Path]:
        return [self.root / p for p in self.state["files"].get(table, [])]

    def manifests(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.files("manifests"))]

    def scan(self, table: str) -> str:
        """SQL for every stored row of a table (all loads), or an empty typed relation."""
        files = self.files(table)
        if files:
            paths = ", ".join(quote_literal(str(p)) for p in files)
            return f"read_parquet([{paths}], union_by_name=true, hive_partitioning=false)"
        return f"({empty_relation(TABLES[table])})"

    def connect(self, threads: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per lake table (see module docstring)."""
        return self.register(connect_duckdb(self.ws, threads))

    def register(self, con):
        """Create the lake's views on `con`: DuckDB, or any connection running DuckDB SQL (the Spark engine,
        propel.features.spark)."""
        for name, table in TABLES.items():
            con.execute(f"CREATE OR REPLACE VIEW {name}_all AS SELECT * FROM {self.scan(name)}")
            if table.key:
                latest = ", ".join(table.key)
                con.execute(
                    f"CREATE OR REPLACE VIEW {name}_latest AS SELECT * EXCLUDE (_rn) FROM ("
                    f"SELECT *, row_number() OVER (PARTITION BY {latest} ORDER BY _load DESC) AS _rn "
                    f"FROM {name}_all) WHERE _rn = 1"
                )
        self.identity_map_view(con)
        for name in ("events", "campaign_touches"):
            con.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT m.customer_id, e.* FROM {name}_all e "
                "JOIN identity_map m USING (identity_type, identity_value)"
            )
        # A customer's attributes: the record of the surviving id wins over records merged into it.
        con.execute(
            "CREATE OR REPLACE VIEW customers AS SELECT * EXCLUDE (_rn, customer_id) RENAME (_resolved AS customer_id) FROM ("
            "SELECT c.*, m.customer_id AS _resolved, row_number() OVER (PARTITION BY m.customer_id "
            "ORDER BY (c.customer_id = m.customer_id) DESC, c._load DESC) AS _rn FROM customers_latest c "
            "JOIN identity_map m ON m.identity_type = 'customer_id' AND m.identity_value = c.customer_id"
            ") WHERE _rn = 1"
        )
        # The one consent rule every export uses: only an explicit yes on the customer's record counts;
        # customers without a CRM record (anonymous profiles) or without a value are not contactable.
        con.execute("CREATE OR REPLACE VIEW contactable AS SELECT customer_id FROM customers WHERE marketing_consent")
        for name in ("items", "campaigns", "labels"):
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_latest")
        return con

    def identity_map_view(self, con: duckdb.DuckDBPyConnection) -> None:
        files = self.files("identity_map")
        if files:
            con.execute(f"CREATE OR REPLACE VIEW identity_map AS SELECT * FROM read_parquet({quote_literal(str(files[0]))})")
        else:
            con.execute("CREATE OR REPLACE VIEW identity_map AS SELECT NULL::VARCHAR AS identity_type, "
                        "NULL::VARCHAR AS identity_value, NULL::VARCHAR AS customer_id WHERE false")

    # ---- writing -------------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, operation: str):
        def refuse(holder: str) -> LakeBusy:
            what = "another ingest" if holder.startswith("ingest") else "another lake write"
            return LakeBusy(f"{self.root}: {what} is running ({holder}); the lake takes one writer at a time. "
                            "Fix: wait for it to finish, then re-run this command.")
        with exclusive(self.root / LOCK, operation, refuse):
            yield

    @contextmanager
    def transaction(self, operation: str):
        """All-or-nothing write: under the lock, on the newest version; `new_file`/`add`/`replace` change a
        pending version that this Lake's reads already see; a normal exit commits it, an exception
        deletes the new files and keeps the previous version."""
        with self._lock(operation):
            self.state = self._read_state()
            if self.state.get("legacy"):
                self._convert()
            (self.root / COMMITS).mkdir(exist_ok=True)
            self._collect_garbage()  # files of an interrupted write, and files the last commit replaced
            before = copy.deepcopy(self.state)
            try:
                yield self
            except BaseException:
                self.state = before
                self._collect_garbage()
                raise
            self._commit(operation, before)

    def new_file(self, table: str, name: str) -> Path:
        """A path for a new file of `table` in the pending version (caller writes it, then `add`s it)."""
        path = self.root / table / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, table: str, paths: list[Path]) -> None:
        self.state["files"].setdefault(table, []).extend(str(p.relative_to(self.root)) for p in paths)

    def replace(self, table: str, paths: list[Path]) -> None:
        self.state["files"][table] = [str(p.relative_to(self.root)) for p in paths]

    def _commit(self, operation: str, state_before: dict) -> None:
        version = state_before["version"] + 1
        files = {t: f for t, f in self.state["files"].items() if f}
        changed = {t for t in set(files) | set(state_before["files"]) if files.get(t) != state_before["files"].get(t)}
        if not changed:
            return
        new = {self.root / p for t in changed for p in files.get(t, [])} - {self.root / p for f in state_before["files"].values() for p in f}
        for path in new:  # data durable before the record that makes it visible
            _fsync(path)
        for parent in {p.parent for p in new}:
            _fsync(parent)
        state = {"version": version, "operation": operation, "committed_at": datetime.now(timezone.utc).isoformat(),
                 "files": files, "table_versions": {**state_before["table_versions"], **{t: version for t in changed}}}
        log_dir = self.root / COMMITS
        # A lake without the log folder reads as an old one, so a converted lake's first record brings the
        # folder with it: written into a staging folder that is then renamed into place.
        folder = log_dir if log_dir.is_dir() else self.root / f".{COMMITS}.new"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{version:08d}.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        _fsync(tmp)
        crash_point("before_commit")
        os.rename(tmp, folder / f"{version:08d}.json")
        _fsync(folder)
        if folder != log_dir:
            os.rename(folder, log_dir)
            _fsync(self.root)
        crash_point("after_commit")
        self.state = state
        for old in sorted(log_dir.glob("*.json"))[:-2]:  # the version before stays readable, older ones go
            old.unlink()

    def _collect_garbage(self) -> None:
        """Delete every file in a tracked folder that the current version does not list."""
        listed = {self.root / p for f in self.state["files"].values() for p in f}
        for table in TRACKED:
            for path in (self.root / table).rglob("*"):
                if path.is_file() and path not in listed:
                    path.unlink()
        for name in LEGACY_FILES.values():
            if (self.root / name).exists() and self.root / name not in listed:
                (self.root / name).unlink()
        for tmp in (self.root / COMMITS).glob(".*.tmp"):
            tmp.unlink()

    def delete_rows(self, con: duckdb.DuckDBPyConnection, where: dict[str, str]) -> dict[str, int]:
        """Delete, in one commit, the rows of each table matching its SQL condition (`{table: condition}`,
        evaluated on `con`, so it may use `con`'s temp tables); returns rows deleted per table. Files
        with a match are rewritten under a new name; the old ones are deleted right after the commit."""
        removed: dict[str, int] = {}
        with self.transaction("delete"):
            for table, cond in where.items():
                removed[table] = 0
                kept: list[Path] = []
                for path in self.files(table):
                    src = f"read_parquet({quote_literal(str(path))})"
                    hits = con.execute(f"SELECT count(*) FROM {src} WHERE coalesce(({cond}), false)").fetchone()[0]
                    if not hits:
                        kept.append(path)
                        continue
                    removed[table] += hits
                    out = self.new_file(table, str(path.relative_to(self.root / table).with_suffix(""))
                                        .split(".v")[0] + f".v{self.version + 1:08d}.parquet")
                    con.execute(f"COPY (SELECT * FROM {src} WHERE NOT coalesce(({cond}), false)) "
                                f"TO {quote_literal(str(out))} (FORMAT parquet)")
                    kept.append(out)
                self.replace(table, kept)
        self._collect_garbage()
        return removed


def _empty() -> dict:
    return {"version": 0, "files": {}, "table_versions": {}}




def empty_relation(table: Table) -> str:
    cols = [f"NULL::{LAKE_TYPES[c.kind]} AS \"{c.name}\"" for c in table.columns]
    if table.identified:
        cols = [c for c in cols if not c.endswith('"customer_id"')] + ["NULL::VARCHAR AS source_customer_id"]
    return f"SELECT {', '.join(cols)}, NULL::VARCHAR AS _load WHERE false"


def memory_settings(ws: Workspace) -> list[str]:
    """The SQL that bounds a DuckDB connection to the workspace's `duckdb_memory_limit`, spilling beyond it into
    the workspace (every DuckDB connection of Propel's, Feast's offline store's too)."""
    spill = ws.data / ".duckdb_tmp"
    spill.mkdir(parents=True, exist_ok=True)
    return [f"SET temp_directory = '{spill}'", f"SET memory_limit = '{ws.settings().duckdb_memory_limit}'"]


def connect_duckdb(ws: Workspace, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB in memory, UTC, spilling to the workspace when a query outgrows memory."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for setting in memory_settings(ws):
        con.execute(setting)
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con

"""Where the feature build's time goes, and the least its output costs.

    python bench/build_profile.py WORKSPACE [SNAPSHOTS]   -> WORKSPACE/bench_build_profile.json

Runs `propel.features.build.build` with every SQL statement timed (summed per target table, e.g. `st_daily`
for the activity running sums, `copy customer_id` for writing customer snapshots), then measures
the output floor: the built snapshots loaded back into memory and written to Parquet again, the
part of a build that no faster feature computation can remove.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from propel.features import build as fb
from propel.lake.tables import Lake, connect_duckdb
from propel.config import Workspace

_TARGET = re.compile(r"\s*(?:CREATE OR REPLACE TEMP TABLE (\w+)|COPY \(SELECT (\w+)|(\w+))")


class _Timed:
    """A DuckDB connection whose `execute` adds each statement's time to `totals`."""

    def __init__(self, con, totals: Counter):
        self._con, self._totals = con, totals

    def execute(self, sql: str, *args):
        started = time.perf_counter()
        result = self._con.execute(sql, *args)
        m = _TARGET.match(sql)
        self._totals[m[1] or (m[2] and f"copy {m[2]}") or m[3]] += time.perf_counter() - started
        return result

    def __getattr__(self, name):
        return getattr(self._con, name)


def profile(ws: Workspace, snapshots: int = 52) -> dict:
    totals: Counter = Counter()
    connect = Lake.connect
    Lake.connect = lambda self, *a, **k: _Timed(connect(self, *a, **k), totals)
    try:
        report = fb.build(ws, snapshots=snapshots)
    finally:
        Lake.connect = connect
    return {"build_seconds": round(report.seconds, 1), "snapshots": len(report.cutoffs),
            "customer_rows": report.customer_rows,
            "statements_seconds": {k: round(v, 2) for k, v in totals.most_common()},
            "output_floor_seconds": round(_parquet_floor(ws), 1)}


def _parquet_floor(ws: Workspace) -> float:
    """Seconds to write the build's customer table files (its change-only rows) to Parquet from memory, as the
    build writes them: the raw files on purpose, this times their writing, not the features they hold."""
    con, spent = connect_duckdb(ws), 0.0
    for path in sorted(ws.customer_snapshots.glob("*.parquet")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE snap AS SELECT * FROM read_parquet('{path}')")
        started = time.perf_counter()
        con.execute(f"COPY snap TO '{ws.features / 'floor.parquet'}' (FORMAT parquet)")
        spent += time.perf_counter() - started
    (ws.features / "floor.parquet").unlink(missing_ok=True)
    return spent


def main(argv: list[str]) -> None:
    ws = Workspace.resolve(argv[0])
    out = profile(ws, int(argv[1]) if len(argv) > 1 else 52)
    (Path(argv[0]) / "bench_build_profile.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])

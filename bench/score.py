"""Batch scoring at scale for `bench/run.py` (scale `score-1m`): 1M customers scored and exported by
`propel score` (target: <= 30 s for feature read + predict + write, memory bounded by chunks).

Setup (`python bench/score.py setup BASE`, cached): a demo-size workspace (20k customers x 365 days,
the `ingest-1m` raw data when present) with features and a churn champion, then a 1M-customer
workspace made from it: the demo's latest snapshot, profile and consent replicated to 1M new ids, a
lake `customers` table with their consent, and the demo champion registered as its champion. Each
export is then one `propel score` process, timed by bench/run.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import date
from pathlib import Path

import common  # bench/common.py
from common import BIN, ROOT

sys.path.insert(0, str(ROOT))
CUSTOMERS = 1_000_000
# label -> `propel score churn` arguments (the output file is added)
RUNS = {
    "all customers -> parquet, no reasons": (["--reasons", "0"], "all.parquet"),
    "all customers -> csv, no reasons": (["--reasons", "0"], "all.csv"),
    "top 10% -> csv with 3 reasons": (["--top", "10%"], "top10.csv"),
    "where + top 5000 -> csv with 3 reasons": (["--where", "city_tier = 1 AND days_since_last_purchase < 90",
                                                "--top", "5000"], "tier1.csv"),
}


def stages(base: Path, run) -> list[dict]:
    """Setup, then each run of RUNS as its own process (`run(label, cmd)` from bench/run.py)."""
    rows = [run("score-1m setup (demo champion, 1M-customer workspace)", [sys.executable, __file__, "setup", base])]
    for label, (args, name) in RUNS.items():
        out = base / "out" / name
        out.parent.mkdir(exist_ok=True)
        row = run(f"score-1m {label}", [BIN / "propel", "--workspace", base / "ws", "score", "churn", *args,
                                        "--out", out])
        summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
        row.update({"scored": summary["counts"]["scored"], "exported": summary["counts"]["exported"],
                    "in_process_seconds": summary["seconds"], "output_mib": round(out.stat().st_size / 2**20, 1)})
        rows.append(row)
    return rows



def demo_workspace(base: Path) -> Path:
    """20k customers x 365 days with features and a churn champion (as `make demo`)."""
    return common.demo_workspace(base / "demo", [("features", "build"), ("features", "apply"), ("train", "churn")])


def big_workspace(demo: Path, ws: Path, n: int) -> None:
    """The demo's latest customers replicated to `n` ids (B0000000...), with features, profile, consent
    and the demo's churn champion."""
    import mlflow

    from propel.features.asof import as_of_sql
    from propel.features.build import load_catalog
    from propel.lake.tables import Lake
    from propel.config import Workspace
    from propel.training import registry

    src, dst = Workspace.resolve(demo), Workspace.resolve(ws)
    shutil.rmtree(ws, ignore_errors=True)
    (dst.customer_snapshots).mkdir(parents=True)
    (dst.lake / "customers").mkdir(parents=True)
    catalog = load_catalog(src)
    latest = catalog["cutoffs"][-1]
    con = Lake(src).connect()
    # the stored rows as of the latest cutoff: the one table file of a build with that single cutoff
    snap = f"({as_of_sql(src, date.fromisoformat(latest), stored=True)})"
    rows = con.execute(f"SELECT count(*) FROM {snap}").fetchall()[0][0]
    con.execute(f"""CREATE TEMP TABLE ids AS SELECT printf('B%07d', g.range) AS customer_id, s.customer_id AS src
                    FROM range({n}) g JOIN (SELECT customer_id, row_number() OVER (ORDER BY customer_id) - 1 AS r
                                            FROM {snap}) s ON s.r = g.range % {rows}""")
    for rel, out in ((snap, dst.customer_snapshots / f"{latest}.parquet"),
                     (f"read_parquet('{src.profile}')", dst.profile)):
        con.execute(f"""COPY (SELECT ids.customer_id, t.* EXCLUDE (customer_id) FROM ids
                              JOIN {rel} t ON t.customer_id = ids.src ORDER BY ids.customer_id)
                        TO '{out}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT ids.customer_id, c.signup_at, coalesce(c.marketing_consent, true) AS marketing_consent,
                                 'L000001' AS _load
                          FROM ids LEFT JOIN customers c ON c.customer_id = ids.src)
                    TO '{dst.lake / "customers" / "L000001.parquet"}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT 'customer_id' AS identity_type, customer_id AS identity_value, customer_id FROM ids)
                    TO '{dst.lake / "identity_map.parquet"}' (FORMAT parquet)""")
    (dst.catalog).write_text(json.dumps({**catalog, "cutoffs": [latest], "customer_rows": n}, indent=2))
    registry.tracking(src)
    loaded = mlflow.pyfunc.load_model("models:/churn@champion")
    registry.tracking(dst)
    with mlflow.start_run(experiment_id=registry.experiment(dst, "churn")):
        info = mlflow.pyfunc.log_model(name="model", python_model=loaded.unwrap_python_model(),
                                       registered_model_name="churn", signature=loaded.metadata.signature,
                                       pip_requirements=["lightgbm", "scikit-learn", "pandas", "numpy"])
    registry.set_champion(dst, "churn", info.registered_model_version, "bench: the demo workspace's churn champion")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "setup":
        raise SystemExit("usage: python bench/score.py setup BASE_DIR")
    base = Path(sys.argv[2]).resolve()
    big_workspace(demo_workspace(base), base / "ws", CUSTOMERS)

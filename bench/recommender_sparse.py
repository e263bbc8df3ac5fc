"""Shape 4 of issue 16 for `bench/run.py` (scale `recommender-sparse`): a sparse, long ratings log about the
size of MovieLens' small public set (610 users, ~9.7k items, ~100k ratings over years, a handful of users
active in any month), built by the shape's test builder, ingested and trained by `propel train
recommender` in its own process. The row gives events, customers, the validation protocol training chose
and the champion's NDCG@10 next to popularity's (target: at least 1.25x on leave-last-20%-out).

`python bench/recommender_sparse.py BASE_DIR` runs it and writes BASE_DIR/result.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from common import ROOT  # bench/common.py

sys.path.insert(0, str(ROOT))
CUSTOMERS, ITEMS, PER_CUSTOMER = 610, 9_700, 80


def stages(base: Path, run) -> list[dict]:
    row = run("shape sparse_interactions (recommender)", [sys.executable, __file__, base])
    return [{**row, **json.loads((base / "result.json").read_text())}]


def one(base: Path) -> dict:
    from propel.config import Workspace
    from propel.lake.ingest import ingest
    from propel.training import recommender, registry
    from tests.test_shape_sparse_interactions import sparse_log

    shutil.rmtree(base, ignore_errors=True)
    raw = sparse_log(base / "raw", CUSTOMERS, ITEMS, PER_CUSTOMER)
    ws = Workspace.resolve(base / "ws")
    report = ingest(raw, ws)
    result = recommender.train(ws)
    run = registry.tracking(ws).get_run(result.run_id)
    m, p = result.metrics, run.data.params
    return {"shape": "sparse_interactions", "events": int(p["events"]), "customers": int(p["customers"]),
            "items": int(p["items"]), "task": "recommender", "protocol": p["protocol"], "winner": p["winner"],
            "test_customers": int(p["test_customers"]), "ndcg_at_10": round(m["ndcg_at_10"], 4),
            "popular_ndcg_at_10": round(m["popular_ndcg_at_10"], 4),
            "lift_over_popular": round(m["ndcg_at_10"] / max(m["popular_ndcg_at_10"], 1e-12), 2),
            "promoted": result.promoted, "ingest_seconds": round(report.seconds, 1)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/recommender_sparse.py BASE_DIR")
    target = Path(sys.argv[1]).resolve()
    summary = one(target)
    (target / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))

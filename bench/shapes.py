"""The data shapes real customers bring (issue 16), for `bench/run.py` (scale `shapes`): each shape of
tests/shapes.py at the size of the public data set it imitates, run through ingest -> features -> train in
its own process; the table gives rows, customers, task, the protocol training chose, and the champion's
test ROC AUC next to its baselines fitted on the same rows.

`python bench/shapes.py SHAPE CUSTOMERS BASE_DIR` runs one shape and writes BASE_DIR/SHAPE/result.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from common import ROOT  # bench/common.py

sys.path.insert(0, str(ROOT))
# shape -> customers, about the size of the public data set it imitates
SIZES = {"crm_snapshot": 7_000, "transactions": 10_000, "attributes_only": 20_000, "small_imbalanced": 5_822,
         "no_crm_no_campaigns": 3_000}


def stages(base: Path, run) -> list[dict]:
    rows = []
    for name, customers in SIZES.items():
        row = run(f"shape {name}", [sys.executable, __file__, name, customers, base])
        row.update(json.loads((base / name / "result.json").read_text()))
        rows.append(row)
    return rows


def one(name: str, customers: int, base: Path) -> dict:
    """Build the shape's raw data, run the pipeline in process, and summarise the training run."""
    from propel.featurestore import store
    from propel.features.build import build
    from propel.lake.ingest import ingest
    from propel.lake.tables import Lake
    from propel.config import Workspace
    from tests import shapes
    from propel.training import churn, propensity, registry

    out = base / name
    shutil.rmtree(out, ignore_errors=True)
    shape = shapes.BUILDERS[name](out / "raw", n=customers)
    ws = Workspace.resolve(out / "ws")
    ingest(shape.raw, ws)
    build(ws, every_days=7, snapshots=52 if shape.as_of is None else 4)
    store.apply(ws)
    store.materialize(ws)
    result = {"churn": churn, "propensity": propensity}[shape.task].train(ws)
    run = registry.tracking(ws).get_run(result.run_id)
    m, p = result.metrics, run.data.params
    con = Lake(ws).connect()
    events, people = con.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM identity_map)").fetchone()
    heuristic = [v for k, v in m.items() if k.startswith("heuristic_") and k.endswith("roc_auc")]
    return {"shape": name, "events": events, "customers": people, "task": shape.task,
            "label_rows": int(p["labelled_rows"]), "protocol": run.data.tags["propel.protocol"],
            "selected": p.get("selected"), "roc_auc": round(m["roc_auc"], 4),
            "logistic_roc_auc": round(m["logistic_roc_auc"], 4),
            "heuristic_roc_auc": round(heuristic[0], 4) if heuristic else None,
            "gap_to_best_baseline": round(m["baseline_gap_roc_auc"], 4), "promoted": result.promoted}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SIZES:
        raise SystemExit(f"usage: python bench/shapes.py {{{','.join(SIZES)}}} CUSTOMERS BASE_DIR")
    target = Path(sys.argv[3]).resolve()
    summary = one(sys.argv[1], int(sys.argv[2]), target)
    (target / sys.argv[1] / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))

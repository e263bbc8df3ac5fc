"""Real customer data of every common shape (issue 16), end to end: ingest -> features build, apply,
materialize -> train -> `propel score` -> serve. Each shape's data is built here (tests/shapes.py), small.

Serving: the CRM snapshot (explicit labels, ids with leading zeros) is served over HTTP by a real
`propel serve`; the other shapes are scored by the in-process scorer the service calls per request
(serving.scoring.CustomerScorer, the same online store reads), which keeps the set within its time budget:
starting a server costs ~30 s on a busy 2-core machine.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.common import start_server, stop_server
from propel.featurestore import store as fstore
from propel.features.build import build
from propel.lake.ingest import ingest
from propel.cli import app
from propel.config import Workspace
from propel.serving.scoring import CustomerScorer, load_champion
from tests import shapes
from propel.training import churn, propensity, registry

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TRAIN = """
[train]
max_rounds = 400
early_stopping = 30
"""
TASKS = {"churn": churn, "propensity": propensity}


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """An MLflow store with its tables created, copied into each workspace: creating them takes ~13 s."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("mlflow") / "ws")
    registry.tracking(ws).search_experiments()
    return ws.mlflow_db


def pipeline(tmp_path: Path, shape: shapes.Shape, mlflow_db: Path, every_days: int = 7, snapshots: int = 52,
             toml: str = TRAIN) -> tuple[Workspace, dict]:
    """Ingest, build, apply, materialize and train the shape's task; returns the workspace and run metrics."""
    ws = Workspace.resolve(tmp_path / "ws")
    ingest(shape.raw, ws)
    ws.mlruns.mkdir(parents=True)
    shutil.copy(mlflow_db, ws.mlflow_db)
    ws.config_file.write_text(toml)
    build(ws, every_days=every_days, snapshots=snapshots)
    fstore.apply(ws)
    fstore.materialize(ws)
    result = TASKS[shape.task].train(ws)
    assert result.promoted and result.version == "1", result.summary()
    m = result.metrics
    heuristic = max([v for k, v in m.items() if k.startswith("heuristic_") and k.endswith("_roc_auc")], default=0.5)
    assert m["roc_auc"] > max(heuristic + 0.02, 0.6), m
    # as good as a logistic regression fitted on the same rows (small test sets: a noise allowance)
    assert m["roc_auc"] > m["logistic_roc_auc"] - 0.02, m
    run = registry.tracking(ws).get_run(result.run_id)
    return ws, {**m, **run.data.tags, **run.data.params, "run_id": result.run_id}


def scored_by_cli(ws: Workspace, task: str, tmp_path: Path, *args: str) -> pd.DataFrame:
    out = tmp_path / f"{task}.csv"
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "score", task, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"customer_id": str})


def served(ws: Workspace, task: str, ids: list[str], tmp_path: Path) -> list[dict]:
    """`/score/<task>` answers from a real `propel serve` on the workspace."""
    with ws.config_file.open("a") as fh:
        fh.write("\n[serve]\nworkers = 1\nreload_seconds = 0\n")
    try:
        proc, url = start_server([BIN / "propel", "--workspace", ws.root, "serve", "--workers", "1"],
                                 tmp_path / "serve.log", "/healthz", 180)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        r = httpx.post(f"{url}/score/{task}", json={"customer_ids": ids}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["results"]
    finally:
        stop_server(proc)


def in_process(ws: Workspace, task: str, ids: list[str]) -> list[dict]:
    return CustomerScorer(ws, load_champion(ws, task)).score(ids)


def test_crm_snapshot_with_explicit_labels(tmp_path, mlflow_db):
    shape = shapes.crm_snapshot(tmp_path / "raw")
    ws, run = pipeline(tmp_path, shape, mlflow_db, snapshots=4)
    assert run["propel.protocol"] == "customer_holdout+cv5" and "1 moment" in run["propel.protocol_reason"]
    assert run["propel.label_source"] == "explicit"
    model = load_champion(ws, "churn").model
    # money, numbers as text and yes/no flags arrive as numbers; contract and payment as categories
    assert {"monthly_charges", "total_charges", "partner", "tenure_months"} <= set(model.features) - set(model.categories)
    assert {"contract", "payment_method"} <= set(model.categories)
    exported = scored_by_cli(ws, "churn", tmp_path)
    assert exported["customer_id"].str.fullmatch(r"0\d{5}").all(), "ids keep their leading zeros"
    scores = exported.set_index("customer_id")["score"]
    who = [c for c in shape.unlabelled if c in scores.index][:2]  # customers without a label get scored
    rows = served(ws, "churn", [*who, "999999"], tmp_path)
    assert [r["status"] for r in rows] == [200, 200, 404] and 0 < rows[0]["probability"] < 1
    assert [r["probability"] for r in rows[:2]] == pytest.approx(scores[who].tolist(), abs=1e-9), "online = batch"
    assert rows[0]["reasons"], "reason codes from the CRM columns"


def test_transactions_only_from_1997(tmp_path, mlflow_db):
    shape = shapes.transactions(tmp_path / "raw")
    ws, run = pipeline(tmp_path, shape, mlflow_db, every_days=14, snapshots=30)
    assert run["propel.protocol"].startswith("out_of_time") and run["propel.label_source"] == "derived"
    catalog = fstore.load_catalog(ws)
    assert catalog["cutoffs"][-1] == "1998-07-01", "the data's end is now, not the wall clock"
    # no CRM record, so no marketing consent: nobody may be exported for contact, but analysis may score them
    assert scored_by_cli(ws, "churn", tmp_path).empty
    exported = scored_by_cli(ws, "churn", tmp_path, "--ignore-consent")
    rows = in_process(ws, "churn", exported["customer_id"].head(2).tolist())
    assert [r["status"] for r in rows] == [200, 200]
    assert rows[0]["probability"] == pytest.approx(exported["score"].iloc[0], abs=1e-9)


def test_attributes_only(tmp_path, mlflow_db):
    shape = shapes.attributes_only(tmp_path / "raw")
    ws, run = pipeline(tmp_path, shape, mlflow_db, snapshots=4)
    assert run["propel.protocol"] == "customer_holdout+cv5"
    model = load_champion(ws, "propensity").model
    importance = pd.read_csv(registry.tracking(ws).download_artifacts(run["run_id"], "tables/feature_importance.csv",
                                                                      str(tmp_path)))
    assert importance.iloc[0, 0] in {"job", "balance", "housing_loan", "age"}, importance.head()
    assert "job" in model.categories
    exported = scored_by_cli(ws, "propensity", tmp_path)
    rows = in_process(ws, "propensity", exported["customer_id"].head(1).tolist())
    assert rows[0]["status"] == 200 and rows[0]["probability"] == pytest.approx(exported["score"].iloc[0], abs=1e-9)


def test_small_and_imbalanced(tmp_path, mlflow_db):
    shape = shapes.small_imbalanced(tmp_path / "raw")
    ws, run = pipeline(tmp_path, shape, mlflow_db, snapshots=2)
    assert run["propel.protocol"] == "customer_holdout+cv5" and float(run["scale_pos_weight"]) > 3, "class weights"
    assert run["brier"] < run["lightgbm_uncalibrated_brier"], "calibrated probabilities"
    assert int(run["features"]) >= 85
    exported = scored_by_cli(ws, "propensity", tmp_path)
    assert exported["score"].mean() < 0.2, "probabilities at the rare base rate, not the weighted one"
    rows = in_process(ws, "propensity", exported["customer_id"].head(1).tolist())
    assert rows[0]["status"] == 200


def test_no_crm_attributes_and_no_campaigns(tmp_path, mlflow_db):
    shape = shapes.no_crm_no_campaigns(tmp_path / "raw")
    ws, run = pipeline(tmp_path, shape, mlflow_db, every_days=14, snapshots=20)
    assert "customer_profile" not in {v.name for v in fstore.feature_store(ws).list_feature_views()}
    assert run["propel.protocol"].startswith("out_of_time")
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "segments"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "report", "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    exported = scored_by_cli(ws, "churn", tmp_path, "--ignore-consent")
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "train", "propensity"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "campaign" in result.output, result.output
    rows = in_process(ws, "churn", exported["customer_id"].head(2).tolist())
    assert [r["status"] for r in rows] == [200, 200]
    assert rows[0]["probability"] == pytest.approx(exported["score"].iloc[0], abs=1e-9)

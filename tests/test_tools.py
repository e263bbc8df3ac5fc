"""The README's "Using the tools you know": Feast's, MLflow's and BentoML's own commands on a workspace.

Each command of the README's block runs here against a copy of the `champions` workspace (servers on a
free loopback port, checked, stopped); `bentoml build` and `bentoml serve` run in tests/serving/test_serving.py.
A model from the registry also loads and predicts in a process where Propel is not importable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import pandas as pd

from propel.config import Workspace
from propel.featurestore import store as fstore
from propel.features.asof import as_of
from propel.features.build import load_catalog
from propel.training import registry
from tests.helpers import BIN, start, stop

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # Feast's CLI imports the workspace's definitions.py, hence Propel


def readme_commands() -> list[str]:
    section = README.split("\n## Using the tools you know\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()


def _argv(line: str, ws: Workspace) -> list[str]:
    """A README line as an argv for `ws`, the venv's binary first, without its --port (start adds a free one)."""
    line = re.sub(r"--port \d+", "", line.replace("$WS", str(ws.root)))
    tool, *args = shlex.split(line)
    return [str(BIN / tool), *args]


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[1:]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _objects(ws: Workspace) -> dict[str, list[str]]:
    store = fstore.feature_store(ws)
    return {kind: sorted(o.name for o in getattr(store, f"list_{kind}")())
            for kind in ("entities", "feature_views", "on_demand_feature_views", "feature_services")}


def _online(ws: Workspace, ids: list[str]) -> pd.DataFrame:
    store = fstore.feature_store(ws)
    return fstore.online_reader(store, "churn_v1").read(ids)[0]


def test_feast_mlflow_commands_of_the_readme(champions, copy_of, tmp_path):
    ws = copy_of(champions)
    lines = readme_commands()
    assert [line.split()[0] for line in lines] == ["feast"] * 5 + ["mlflow", "bentoml", "PROPEL_HOME=$WS"]
    feast = {line.split()[3]: line for line in lines[:5]}
    objects = _objects(ws)
    assert objects["feature_views"] and objects["feature_services"]

    views, services = _run(_argv(feast["feature-views"], ws)), _run(_argv(feast["feature-services"], ws))
    assert all(name in views for name in objects["feature_views"] + objects["on_demand_feature_views"]), views
    assert all(name in services for name in objects["feature_services"]), services
    _run(_argv(feast["apply"], ws))
    assert _objects(ws) == objects, "a hand-run `feast apply` keeps every object Propel registered"

    # a fresh registry and online store: Feast's own apply and materialize-incremental load them (Propel's engine)
    ws.feast_registry("sqlite").unlink()
    ws.online_store_db.unlink()
    _run(_argv(feast["apply"], ws))
    assert _objects(ws) == objects
    end = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]) + timedelta(seconds=1)
    out = _run(_argv(feast["materialize-incremental"].replace("$(date -u +%FT%T)", end.isoformat()), ws))
    assert "stock path" not in out, out[-3000:]
    ids = as_of(ws, end, columns=[])["customer_id"].tolist()[:40]
    pd.testing.assert_frame_equal(_online(ws, ids), _online(champions, ids))
    with sqlite3.connect(ws.online_store_db) as db:
        assert db.execute("SELECT count(*) FROM propel_item_stats").fetchone()[0] > 0
    again = fstore.materialize(ws)  # Feast's bookkeeping is Propel's: only the whole-loaded (ttl 0) views are due
    assert sorted(again["views"]) == ["customer_features", "customer_profile", "item_stats"]

    proc, url = start(_argv(feast["ui"], ws), tmp_path / "feast-ui.log", ENV, probe="/health")
    try:
        projects = httpx.get(f"{url}/projects-list.json", timeout=30).json()
        assert [p["id"] for p in projects["projects"]] == ["propel"], projects
        listed = httpx.get(f"{url}/api/v1/feature_services", params={"project": "propel"}, timeout=30).json()
        assert sorted(s["spec"]["name"] for s in listed["featureServices"]) == objects["feature_services"], listed
    finally:
        stop(proc)

    proc, url = start(_argv(lines[5], ws), tmp_path / "mlflow-ui.log", ENV, probe="/health")
    try:
        models = httpx.get(f"{url}/api/2.0/mlflow/registered-models/search", timeout=30).json()["registered_models"]
        assert {"churn", "propensity", "uplift", "recommender"} <= {m["name"] for m in models}
        runs = httpx.post(f"{url}/api/2.0/mlflow/runs/search", timeout=30, json={
            "experiment_ids": [registry.experiment(ws, "churn")],
            "filter": "tags.`feast.feature_service` = 'churn_v1'"}).json()
        assert runs.get("runs"), "runs carry Feast's feature-service tag"
        versions = httpx.get(f"{url}/api/2.0/mlflow/model-versions/search", params={"filter": "name='churn'"},
                             timeout=30).json()["model_versions"]
        assert all({"key": "feast.feature_service", "value": "churn_v1"} in v["tags"] for v in versions), versions
    finally:
        stop(proc)

    serving = (ROOT / "tests" / "serving" / "test_serving.py").read_text()
    assert '"bentoml", "build"' in serving and '"bentoml", "serve"' in serving and "PROPEL_HOME" in serving


LOAD = """
import importlib.util, json, sys
# an editable install finds Propel wherever the process runs: take its finder away
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
assert importlib.util.find_spec("propel") is None, "Propel is importable here: the check would prove nothing"
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
out = {}
for task in ("churn", "recommender"):
    model = mlflow.pyfunc.load_model(f"models:/{task}@champion")
    out[task] = pd.DataFrame(model.predict(model.input_example)).to_json()
out["propel"] = sys.modules["propel"].__file__
print(json.dumps(out))
"""


def test_registered_models_load_without_propel(champions, copy_of, tmp_path):
    ws = copy_of(champions)
    registry.tracking(ws)  # this process's MLflow on the copy, for the comparison below
    uri = mlflow.get_tracking_uri()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOAD, uri], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/propel/" in got.pop("propel"), "Propel came from the model's logged code"
    for task, predicted in got.items():
        model = mlflow.pyfunc.load_model(f"models:/{task}@champion")
        assert predicted == pd.DataFrame(model.predict(model.input_example)).to_json(), task

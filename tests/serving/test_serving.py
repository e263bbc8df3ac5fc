"""The HTTP service: a real `propel serve` (BentoML) on a free loopback port, serving a copy of the session
`champions` workspace with an API key: every endpoint checked against the models called in process, the
OpenAPI schema fuzzed (no 5xx), then (last) readiness with a missing champion and reloads after promotions
on that copy. Also the fast model input path the service relies on, and the Bento: `bentoml build` from the
repo, then `bentoml serve <tag>` on the same workspace answering like the models in process."""

from __future__ import annotations

import os
import subprocess
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from propel.featurestore import store as fstore
from propel.config import Workspace
from tests.helpers import BIN, copy_workspace, start, stop
from propel.serving.scoring import CustomerScorer, load_champion
from propel.training import registry
from propel.training.model import model_input, prepare
from propel.training.recommender_model import load_recommender

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"


@pytest.fixture(scope="module")
def served(champions, tmp_path_factory) -> Workspace:
    """A copy of the champions workspace (the last test changes its registry), with an API key."""
    ws = copy_workspace(champions, tmp_path_factory.mktemp("served") / "ws")
    with ws.config_file.open("a") as fh:
        fh.write(f'\n[serve]\napi_key = "{KEY}"\nreload_seconds = 0.5\nworkers = 1\n')
    return ws


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "server.log"


@pytest.fixture(scope="module")
def server(served, server_log):
    proc, url = start([BIN / "propel", "--workspace", served.root, "serve", "--workers", "1"], server_log)
    httpx.get(f"{url}/report", headers={"X-API-Key": KEY})  # starts the (slow) report render in the background
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=30, headers={"X-API-Key": KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def customers(champions) -> list[str]:
    """Three customers the online store knows."""
    path = champions.customer_snapshots / "*.parquet"
    return [r[0] for r in duckdb.sql(f"SELECT DISTINCT customer_id FROM read_parquet('{path}') ORDER BY 1 LIMIT 3").fetchall()]


def champion_model(ws: Workspace, task: str):
    registry.tracking(ws)
    return mlflow.pyfunc.load_model(f"models:/{task}@{registry.CHAMPION}").unwrap_python_model()


def feast_rows(ws: Workspace, service: str, ids: list[str]):
    """Features through Feast's own online API (not the service's fast reader)."""
    store = fstore.feature_store(ws)
    rows = [{"customer_id": i, "request_ts": datetime.now(timezone.utc)} for i in ids]
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_df()


def context_of(model) -> dict:
    levels = getattr(model, "treated", model).categories
    return {c: levels[c][0] for c in ("campaign_channel", "offer_type") if c in model.features}


def test_http_scores_equal_the_batch_export(http, champions, tmp_path):
    """What a marketer exports with `propel score` (offline snapshot) is what an app gets over HTTP (online
    store) for the same customers: score, decile and reason codes."""
    out = tmp_path / "top.csv"
    subprocess.run([BIN / "propel", "--workspace", champions.root, "score", "churn", "--top", "5", "--out", out],
                   check=True, capture_output=True)
    batch = pd.read_csv(out)
    r = http.post("/score/churn", json={"customer_ids": batch["customer_id"].tolist()})
    assert r.status_code == 200, r.text
    online = r.json()["results"]
    assert [row["customer_id"] for row in online] == batch["customer_id"].tolist()
    np.testing.assert_allclose([row["probability"] for row in online], batch["score"], atol=1e-9)
    assert [row["decile"] for row in online] == batch["decile"].tolist()
    assert [[x["feature"] for x in row["reasons"]] for row in online] == \
        [[part.split(" (")[0] for part in text.split("; ")] for text in batch["reasons"]]


@pytest.mark.parametrize("task", ["churn", "propensity", "uplift"])
def test_scores_match_the_models_in_process(http, champions, customers, task):
    model = champion_model(champions, task)
    context = context_of(model)
    r = http.post(f"/score/{task}", json={"customer_ids": [*customers, "no-such-customer"], **context})
    assert r.status_code == 200, r.text
    body = r.json()
    version = registry.champion_version(registry.tracking(champions), task).version
    assert body["task"] == task and body["model_version"] == str(version) and body["unknown"] == 1
    *scored, unknown = body["results"]
    assert unknown == {"customer_id": "no-such-customer", "status": 404, "error": unknown["error"]}

    df = feast_rows(champions, model.feature_service, customers).assign(**context)
    categorical = list(getattr(model, "treated", model).categories)
    x = model_input(df, model.features, categorical)
    pred = model.predict(None, x)
    reasons = model.explain(x, 3)
    edges = model.decile_edges
    for i, row in enumerate(scored):
        assert row["customer_id"] == customers[i] and row["status"] == 200 and row["model_version"] == str(version)
        value = row["uplift"] if task == "uplift" else row["probability"]
        assert value == pytest.approx(pred["score"].iloc[i], rel=1e-12, abs=1e-12)
        if task == "uplift":
            assert row["p_treated"] == pytest.approx(pred["p_treated"].iloc[i], abs=1e-12)
        expected_decile = None if not edges else 1 + sum(pred["score"].iloc[i] < e for e in edges)
        assert row["decile"] == expected_decile
        assert [(r["feature"], r["contribution"]) for r in row["reasons"]] == \
            [(f, pytest.approx(c, abs=1e-6)) for f, c in reasons[i]]


@pytest.mark.parametrize("path, body, field", [
    ("/score/churn", {}, "customer_ids"),
    ("/score/churn", {"customer_ids": "C1"}, "customer_ids"),
    ("/score/churn", {"customer_ids": []}, "customer_ids"),
    ("/score/churn", {"customer_ids": [1]}, "customer_ids"),
    ("/score/churn", {"customer_ids": ["C1"] * 1001}, "customer_ids"),
    ("/score/churn", {"customer_ids": ["C1"], "reasons": "3"}, "reasons"),
    ("/score/churn", {"customer_ids": ["C1"], "customer": "C1"}, "customer"),
    ("/score/propensity", {"customer_ids": ["C1"]}, "campaign_channel"),
    ("/score/uplift", {"customer_ids": ["C1"], "campaign_channel": "carrier-pigeon", "offer_type": "x"}, "campaign_channel"),
    ("/recommend", {"customer_id": "C1", "k": 0}, "k"),
    ("/recommend", {"customer_id": "C1", "k": 101}, "k"),
    ("/recommend", {"k": 5}, "customer_id"),
    ("/recommend", {"customer_id": "C1", "filters": {"min_price": 50, "max_price": 10}}, "filters"),
    ("/recommend", {"customer_id": "C1", "filters": {"exclude": "I1"}}, "filters"),
    ("/similar_items", {"item_id": "I1", "k": 1.5}, "k"),
])
def test_bad_input_is_a_400_naming_the_field(http, path, body, field):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert any(d["loc"] and d["loc"][0] == field for d in r.json()["detail"]), r.json()


def test_invalid_json_is_a_400(http):
    r = http.post("/score/churn", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.text


def test_recommendations(http, champions, customers):
    model, version = load_recommender(champions)
    known = next(c for c in customers if model.knows_customer(c))
    r = http.post("/recommend", json={"customer_id": known, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.recommend(known, 5)
    assert [i["item_id"] for i in body["items"]] == expected.items and body["model_version"] == version
    assert body["fallback"] is False and len(body["recommendation_id"]) == 32
    other = http.post("/recommend", json={"customer_id": known, "k": 5}).json()
    assert other["recommendation_id"] != body["recommendation_id"]

    r = http.post("/recommend", json={"customer_id": "no-such-customer", "k": 5}).json()
    assert r["fallback"] is True and r["fallback_reason"] == "unknown_customer"
    assert [i["item_id"] for i in r["items"]] == model.recommend("no-such-customer", 5).items

    category = model.categories[0]
    max_price = float(np.median(model.price[model.category == 0]))
    request = {"customer_id": known, "k": 5, "filters": {"category": category, "max_price": max_price,
                                                         "exclude": expected.items[:1]},
               "fresh_interactions": expected.items[1:2]}
    r = http.post("/recommend", json=request).json()
    want = model.recommend(known, 5, category=category, max_price=max_price, exclude=expected.items[:1],
                           fresh_items=expected.items[1:2])
    got = [i["item_id"] for i in r["items"]]
    assert got and got == want.items and [i["score"] for i in r["items"]] == pytest.approx(want.scores)
    row = {item: n for n, item in enumerate(model.items)}
    assert all(model.category[row[i]] == 0 and model.price[row[i]] <= max_price for i in got)
    r = http.post("/recommend", json={"customer_id": known, "filters": {"category": "no-such-category"}})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["filters", "category"]

    item = expected.items[0]
    r = http.post("/similar_items", json={"item_id": item, "k": 4})
    assert [i["item_id"] for i in r.json()["items"]] == [i for i, _ in model.similar_items(item, 4)]
    r = http.post("/similar_items", json={"item_id": "no-such-item"})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["item_id"]


def test_health_readiness_metadata_metrics(http, champions):
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz").json()
    assert ready["ready"] is True and ready["online_store"]["reachable"] is True
    client = registry.tracking(champions)
    meta = http.get("/metadata").json()["tasks"]
    for task in ("churn", "propensity", "uplift", "recommender"):
        champ = registry.champion_version(client, task)
        assert ready["tasks"][task]["ready"] is True
        assert meta[task]["version"] == str(champ.version) and meta[task]["training_run"] == champ.run_id
    assert meta["churn"]["feature_service"] == "churn_v1"

    http.post("/score/churn", json={"customer_ids": ["no-such-customer"]})
    http.post("/recommend", json={"customer_id": "no-such-customer"})
    # BentoML counts a request after its answer is sent: poll briefly (bounded) rather than race it
    deadline = time.monotonic() + 10
    while "bentoml_service_request_total" not in (metrics := http.get("/metrics").text) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "bentoml_service_request_total" in metrics
    assert 'propel_unknown_ids_total{endpoint="score/churn"}' in metrics
    assert 'propel_fallback_total{endpoint="recommend",reason="unknown_customer"}' in metrics


def test_api_key(server, http):
    assert httpx.post(f"{server}/score/churn", json={"customer_ids": ["x"]}).status_code == 401
    assert httpx.post(f"{server}/score/churn", json={"customer_ids": ["x"]}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{server}/metadata").status_code == 401
    assert httpx.get(f"{server}/readyz").status_code == 200 and httpx.get(f"{server}/metrics").status_code == 200
    assert http.post("/score/churn", json={"customer_ids": ["x"]}).status_code == 200


def test_fuzzed_requests_never_get_a_5xx(server):
    """Schemathesis over the service's OpenAPI schema: valid and invalid bodies for every operation."""
    schema = schemathesis.openapi.from_url(f"{server}/docs.json", headers={"X-API-Key": KEY})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /recommend", "POST /score/churn", "POST /score/uplift"} <= {op.label for op in operations}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if len(op.body) else (GenerationMode.POSITIVE,):
            @settings(max_examples=10, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case):
                r = case.call(base_url=server, headers={"X-API-Key": KEY})
                assert r.status_code < 500, f"{case.method} {case.path} {case.body!r}: {r.status_code} {r.text[:300]}"

            fuzz()


def test_fast_model_input_equals_the_pandas_path(champions):
    """The service scores through `encode` (NumPy) instead of `prepare` (pandas): same numbers, also for
    missing, unseen and text values."""
    path = champions.customer_snapshots / "*.parquet"
    frame = duckdb.sql(f"SELECT * FROM read_parquet('{path}') USING SAMPLE 300 ROWS (reservoir, 7)").df()
    for task in ("churn", "propensity", "uplift"):
        model = champion_model(champions, task)
        df = frame.reindex(columns=["customer_id", *model.features]).copy()
        for c in ("campaign_channel", "offer_type"):
            if c in model.features:
                df[c] = np.resize(["email", "sms", "never-seen", None], len(df))
        numeric = next(f for f in model.features if f not in getattr(model, "treated", model).categories)
        df[numeric] = df[numeric].astype(object)
        df.loc[df.index[:3], numeric] = ["12", "not a number", None]
        for clf in ([model.treated, model.control] if task == "uplift" else [model]):
            x = prepare(df, clf.features, clf.categories)
            assert np.array_equal(clf.raw_score(df), clf.booster.predict(x))
            assert np.array_equal(clf.contributions(df), clf.booster.predict(x, pred_contrib=True)[:, :-1])


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> tuple[str, dict]:
    """`bentoml build` in the repo (pyproject.toml's [tool.bentoml.build]) into a temporary BENTOML_HOME: the Bento's tag and the
    environment that finds it."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([BIN / "bentoml", "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tag = next(line for line in done.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
    return tag, env


@pytest.mark.slow  # builds a Bento
def test_bento_builds_with_the_project_dependencies(bento):
    tag, env = bento
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name, version = tag.split(":")
    path = Path(env["BENTOML_HOME"]) / "bentos" / name / version
    spec = yaml.safe_load((path / "src" / "bentofile.yaml").read_text())  # the options BentoML built with
    assert spec["python"]["packages"] == project["dependencies"], "the Bento's packages are pyproject.toml's"
    assert (path / "src" / "propel" / "serving" / "service.py").exists() and (path / "src" / "propel" / "featurestore" / "repo" / "feature_store.yaml").exists()
    routes = {r["route"] for r in yaml.safe_load((path / "bento.yaml").read_text())["schema"]["routes"]}
    assert {"/recommend", "/similar_items", "/score/churn", "/score/propensity", "/score/uplift", "/reload"} <= routes


def test_the_built_bento_serves_like_propel_serve(bento, served, customers, tmp_path):
    """`bentoml serve <tag>` from the Bento store, with PROPEL_HOME naming the workspace (as `propel serve`
    sets it): its settings apply (API key, one worker), it is ready, and it scores as the models in process."""
    tag, env = bento
    proc, url = start([BIN / "bentoml", "serve", tag, "--host", "127.0.0.1"], tmp_path / "bento.log",
                      {**env, "PROPEL_HOME": str(served.root)})
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": KEY}) as client:
            ready = client.get("/readyz").json()
            assert ready["ready"] is True and ready["degraded"] is False, ready
            assert httpx.post(f"{url}/score/churn", json={"customer_ids": customers}).status_code == 401
            r = client.post("/score/churn", json={"customer_ids": customers})
            assert r.status_code == 200, r.text
            expected = CustomerScorer(served, load_champion(served, "churn")).score(customers)
            assert r.json()["results"] == expected
    finally:
        stop(proc)
    assert (tmp_path / "bento.log").read_text().count("Service propel initialized") == 1  # serve.workers = 1


def test_serve_needs_a_workspace(tmp_path):
    from typer.testing import CliRunner

    from propel.cli import app

    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "nowhere"), "serve"])
    assert result.exit_code == 2 and "no workspace at" in result.output


def test_report_is_rendered_in_the_background(http):
    r = http.get("/report")
    deadline = time.monotonic() + 240  # the render (started by the server fixture) takes seconds of CPU
    while r.status_code == 503 and "being rendered" in r.text and time.monotonic() < deadline:
        time.sleep(1)
        r = http.get("/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:500]
    assert "Propel" in r.text and 'id="f-tier"' in r.text, "the drill-down report, filters and all"


def test_logs_carry_no_customer_ids(http, server_log, customers):
    """No PII in the server's log: scores, recommendations and rejected bodies for real customers leave no id."""
    http.post("/score/churn", json={"customer_ids": customers})
    http.post("/recommend", json={"customer_id": customers[0]})
    assert http.post("/score/churn", json={"customer_ids": customers, "reasons": "3"}).status_code == 400
    log = server_log.read_text()
    assert "Service propel initialized" in log  # the log is the server's
    assert [c for c in customers if c in log] == []


def reload(http, done) -> None:
    """POST /reload, then wait (bounded) until /metadata shows `done(tasks)`: a slow load answers 202."""
    r = http.post("/reload")
    assert r.status_code in (200, 202), r.text
    deadline = time.monotonic() + 60
    while not done(http.get("/metadata").json()["tasks"]):
        assert time.monotonic() < deadline, "the reload did not complete"
        time.sleep(0.2)


def test_missing_champion_then_promotions_reach_the_server(http, served):
    """Last (it changes the served copy's registry): without an uplift champion /readyz says so and
    /score/uplift answers 503 while the others work; promotions arrive by POST /reload and by the
    registry watcher."""
    client = registry.tracking(served)
    client.delete_registered_model_alias("uplift", registry.CHAMPION)
    reload(http, lambda tasks: not tasks["uplift"]["ready"])
    ready = http.get("/readyz").json()
    assert ready["ready"] is True and ready["degraded"] is True
    assert ready["tasks"]["uplift"]["ready"] is False and "no champion" in ready["tasks"]["uplift"]["error"]
    assert ready["tasks"]["churn"]["ready"] is True
    r = http.post("/score/uplift", json={"customer_ids": ["x"]})
    assert r.status_code == 503 and "no champion model for 'uplift'" in r.json()["error"]
    assert http.post("/score/churn", json={"customer_ids": ["x"]}).status_code == 200

    registry.set_champion(served, "uplift", 1, "test: restore")
    reload(http, lambda tasks: tasks["uplift"]["version"] == "1")
    model = champion_model(served, "uplift")
    r = http.post("/score/uplift", json={"customer_ids": ["x"], **context_of(model)})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 404

    churn = registry.champion_version(client, "churn")
    new = client.create_model_version("churn", churn.source, run_id=churn.run_id)
    registry.set_champion(served, "churn", new.version, "test: promote")
    deadline = time.monotonic() + 60  # no POST /reload: the watcher notices the registry change by itself
    while http.get("/metadata").json()["tasks"]["churn"]["version"] != str(new.version):
        assert time.monotonic() < deadline, "the promotion did not reach the server"
        time.sleep(0.2)
    assert http.post("/score/churn", json={"customer_ids": ["x"]}).json()["model_version"] == str(new.version)

"""The HTTP service: a real `propel serve` (BentoML) on a free loopback port, serving a copy of the session
`champions` workspace with an API key: every endpoint checked against the models called in process, the
OpenAPI schema fuzzed (no 5xx), then (last) readiness with a missing champion and reloads after promotions
on that copy. Also the fast model input path the service relies on, and the Bento: `bentoml build` from the
repo, then `bentoml serve <tag>` on the same workspace answering like the models in process."""

from __future__ import annotations

import asyncio
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
import yaml

from propel.featurestore import store as fstore
from propel.config import Workspace
from tests.helpers import BIN, copy_workspace, start, stop
from propel.serving.scoring import CustomerScorer, load_champion
from propel.training import registry
from propel.training.model import model_input, prepare
from propel.training.recommender_model import load_recommender

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
TIMEOUT = 2.0  # serve.timeout_seconds: short, so that 8 large batches at once would outlast it without the queue


@pytest.fixture(scope="module")
def served(champions, tmp_path_factory) -> Workspace:
    """A copy of the champions workspace (the last test changes its registry), with an API key."""
    ws = copy_workspace(champions, tmp_path_factory.mktemp("served") / "ws")
    with ws.config_file.open("a") as fh:
        fh.write(f'\n[serve]\napi_key = "{KEY}"\nreload_seconds = 0.5\nworkers = 1\ntimeout_seconds = {TIMEOUT}\n')
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
    now = datetime.now(timezone.utc)  # the days since count to the send, as the service counts to the request
    subprocess.run([BIN / "propel", "--workspace", champions.root, "score", "churn", "--top", "5", "--out", out,
                    "--send-at", f"{now:%Y-%m-%dT%H:%M}"], check=True, capture_output=True)
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
    wanted = ("bentoml_service_request_total", 'propel_unknown_ids_total{endpoint="score/churn"}',
              'propel_fallback_total{endpoint="recommend",reason="unknown_customer"}')
    while not all(w in (metrics := http.get("/metrics").text) for w in wanted) and time.monotonic() < deadline:
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


def test_schemathesis_all_checks(server, tmp_path):
    """`schemathesis run --checks all` over every operation of the served spec (bounded in examples and
    time): no 5xx, every status and body as documented, valid requests accepted, invalid ones rejected,
    the API key enforced, 405 for undeclared methods."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    done = subprocess.run([BIN / "schemathesis", "run", f"{server}/docs.json", "--checks", "all", "--max-examples", "15",
                           "--seed", "17", "--generation-database", "none", "--workers", "1", "--request-timeout", "20",
                           "--no-color", "-H", f"X-API-Key: {KEY}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Tested: 13" in done.stdout and "No issues found" in done.stdout, done.stdout[-3000:]


def test_openapi_says_what_the_server_answers(http, champions):
    spec = http.get("/docs.json").json()
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["type"] == "array"
    r = http.post("/score/churn", json={"customer_ids": "C1"})
    assert isinstance(r.json()["detail"], list) and "#/components/schemas/Error" in str(spec["paths"]["/score/churn"])
    model = champion_model(champions, "propensity")
    body = spec["paths"]["/score/propensity"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert {"customer_ids", "campaign_channel", "offer_type"} <= set(schema["required"])
    assert schema["properties"]["campaign_channel"]["enum"] == model.categories["campaign_channel"]
    responses = spec["paths"]["/score/churn"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "429", "503"} <= set(responses) and "500" not in responses
    assert "Retry-After" in responses["429"]["headers"]
    assert {"/metadata", "/report"} <= set(spec["paths"])


ROUTES = ["/recommend", "/similar_items", "/score/churn", "/score/propensity", "/score/uplift", "/reload"]


@pytest.mark.parametrize("path", ROUTES)
def test_non_json_bodies_are_a_415(http, path):
    """Issue 17: multipart/form-data was a 500 (`KeyError: b'boundary'`) on every POST endpoint."""
    assert http.post(path, files={"customer_ids": ("ids.txt", b"C1")}).status_code == 415
    for media in ("multipart/form-data", "text/plain", "application/x-www-form-urlencoded", "application/xml"):
        r = http.post(path, content=b'{"customer_ids": ["C1"]}', headers={"content-type": media})
        assert r.status_code == 415 and r.json()["detail"][0]["loc"] == ["content-type"], (media, r.text)


def test_a_large_body_is_a_413_before_it_is_parsed(http, server_log):
    """36 MB of ids: refused as too large (a parsed body would be a 400 naming customer_ids), whether its
    size is announced (Content-Length) or only seen while reading it (chunked)."""
    body = b'{"customer_ids": [' + b",".join([b'"C0000001"'] * 3_300_000) + b"]}"
    assert len(body) > 36_000_000
    r = http.post("/score/churn", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"], r.text[:300]
    chunks = (body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))
    r = http.post("/score/churn", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    assert http.post("/score/churn", json={"customer_ids": ["C1"]}).status_code == 200  # the server is fine


def test_concurrent_large_batches_are_queued_or_refused_never_timed_out(server, champions):
    """8 concurrent /score/churn calls of 1,000 ids with reasons (issue 17: 63 of 64 were 504): each is
    scored (200, all 1,000 results) or refused at once (429 with Retry-After); a retry after it is scored."""
    path = champions.customer_snapshots / "*.parquet"
    ids = [r[0] for r in duckdb.sql(f"SELECT DISTINCT customer_id FROM read_parquet('{path}') ORDER BY 1").fetchall()]
    ids = (ids * (1000 // len(ids) + 1))[:1000]
    body = {"customer_ids": ids, "reasons": 3}

    async def calls(n):
        async with httpx.AsyncClient(base_url=server, timeout=60, headers={"X-API-Key": KEY}) as client:
            return await asyncio.gather(*[client.post("/score/churn", json=body) for _ in range(n)])

    for _ in range(2):  # the second round runs with the queue's measured cost per id
        answers = asyncio.run(calls(8))
        assert sorted({r.status_code for r in answers}) in ([200], [200, 429]), [r.status_code for r in answers]
        assert all(len(r.json()["results"]) == 1000 for r in answers if r.status_code == 200)
        refused = [r for r in answers if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    if refused:
        time.sleep(int(refused[0].headers["retry-after"]))  # as the client is told to
        assert httpx.post(f"{server}/score/churn", json=body, headers={"X-API-Key": KEY}, timeout=60).status_code == 200


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
    while r.status_code == 202 and "being rendered" in r.text and time.monotonic() < deadline:
        time.sleep(1)
        r = http.get("/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:500]
    assert "Propel" in r.text and 'id="f-tier"' in r.text, "the drill-down report, filters and all"


def test_logs_carry_no_customer_ids(http, server_log, customers):
    """No PII in the server's log: scores, recommendations and rejected bodies (wrong types, too many ids,
    broken JSON, all quoting real customer ids) leave no id."""
    http.post("/score/churn", json={"customer_ids": customers})
    http.post("/recommend", json={"customer_id": customers[0]})
    rejected = [{"customer_ids": customers, "reasons": "3"}, {"customer_ids": customers[0]},
                {"customer_ids": customers * 400}, {"customer_id": customers[0], "k": "5"},
                {"customer_ids": [customers[0], 7]}]
    for body in rejected:
        assert http.post("/score/churn" if "customer_ids" in body else "/recommend", json=body).status_code == 400
    broken = f'{{"customer_ids": ["{customers[0]}"'.encode()
    assert http.post("/score/churn", content=broken, headers={"content-type": "application/json"}).status_code == 400
    log = server_log.read_text()
    assert "Service propel initialized" in log and "ValidationError" in log  # the log is the server's, rejections noted
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
    r = http.post("/score/uplift", json={"customer_ids": ["x"], "campaign_channel": "email", "offer_type": "x"})
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

"""Batch scoring (`propel score`): audiences, exports, consent, reason codes, next best action, the same
scores as the online path and as Spark. Uses the session `champions` workspace read-only; outputs go to tmp_path."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.cli import app
from propel.config import Workspace
from propel.serving import batch, served_log
from propel.serving.audience import Top, where_sql
from propel.serving.batch import Audience, Campaign, load_champion, predict, reasons, snapshot
from propel.serving.scoring import CustomerScorer
from propel.training.model import prepare

runner = CliRunner()


def cli(ws, *args):
    result = runner.invoke(app, ["--workspace", str(ws.root), "score", *args])
    assert "Traceback" not in result.output, result.output
    return result


def read(path):
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


@pytest.fixture(scope="module")
def send_at(champions) -> datetime:
    """A planned send the morning after the latest snapshot."""
    day = snapshot(champions).day
    return datetime(day.year, day.month, day.day, 10, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def base(champions) -> pd.DataFrame:
    """Every customer of the latest snapshot with features, profile and consent, as the job reads them."""
    return Audience(champions, snapshot(champions)).con.sql("SELECT * FROM base").df()


@pytest.fixture(scope="module")
def refused(champions, base) -> set[str]:
    """Snapshot customers without an explicit yes (a no, no value, or no CRM record at all)."""
    con = Lake(champions).connect()
    yes = {r[0] for r in con.execute("SELECT customer_id FROM customers WHERE marketing_consent").fetchall()}
    return set(base["customer_id"]) - yes


def test_top_share_export_honours_consent(champions, base, refused, tmp_path):
    out = tmp_path / "churn.csv"
    result = cli(champions, "churn", "--top", "10%", "--out", str(out))
    assert result.exit_code == 0, result.output
    df, summary = read(out), json.loads((tmp_path / "churn.summary.json").read_text())
    consenting = base[base["_consent"]]
    assert base["customer_id"].isin(refused).sum() > 0  # the data set has customers who refused
    assert len(df) == math.ceil(len(consenting) * 0.1) == summary["counts"]["exported"]
    assert not df["customer_id"].isin(refused).any()
    assert summary["counts"]["excluded_no_consent"] == int((~base["_consent"]).sum()) == base["customer_id"].isin(refused).sum()
    assert summary["counts"]["scored"] == len(consenting)
    assert list(df.columns[:5]) == ["customer_id", "score", "decile", "rank", "reasons"]
    assert df["rank"].tolist() == list(range(1, len(df) + 1))
    assert df["score"].is_monotonic_decreasing and df["decile"].between(1, 10).all()
    assert (df["model_version"] == f"churn v{load_champion(champions, 'churn').version}").all()
    assert summary["deciles"]["basis"] == "training"
    assert summary["freshness"]["snapshot"] == snapshot(champions).day.isoformat()
    assert "excluded for lack of marketing consent" in result.output
    # the exported scores are the best of all consenting customers
    full = predict(load_champion(champions, "churn"), consenting)["score"].to_numpy()
    assert df["score"].min() >= np.sort(full)[-len(df)]


def test_ignoring_consent_is_loud(champions, base, tmp_path):
    out = tmp_path / "analysis.parquet"
    result = cli(champions, "churn", "--ignore-consent", "--reasons", "0", "--out", str(out))
    assert result.exit_code == 0 and "do not use this file to contact anyone" in result.output
    counts = json.loads((tmp_path / "analysis.summary.json").read_text())["counts"]
    assert len(read(out)) == len(base) and counts["included_without_consent"] == int((~base["_consent"]).sum()) > 0


def test_where_count_and_min_score(champions, base, tmp_path):
    out = tmp_path / "tier1.parquet"
    where = "city_tier = 1 AND days_since_last_purchase < 60 AND membership_tier IN ('gold', 'silver')"
    result = cli(champions, "churn", "--where", where, "--top", "25", "--min-score", "0.2", "--reasons", "0",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    allowed = base.query("city_tier == 1 and days_since_last_purchase < 60 and membership_tier in ['gold', 'silver'] "
                         "and _consent")["customer_id"]
    assert 0 < len(df) <= 25 and set(df["customer_id"]) <= set(allowed)
    assert (df["score"] >= 0.2).all() and "reasons" not in df
    summary = json.loads((tmp_path / "tier1.summary.json").read_text())
    assert summary["counts"]["scored"] == len(allowed)


def test_as_of_scores_an_earlier_snapshot(champions, base, tmp_path):
    day = date.fromisoformat(load_catalog(champions)["cutoffs"][-3])
    out = tmp_path / "past.parquet"
    result = cli(champions, "churn", "--as-of", f"{day + timedelta(days=2):%Y-%m-%d}", "--reasons", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "past.summary.json").read_text())
    assert summary["freshness"]["snapshot"] == day.isoformat() != summary["freshness"]["latest_snapshot"]
    past = Audience(champions, snapshot(champions, day)).con.sql("SELECT * FROM base WHERE _consent").df()
    want = predict(load_champion(champions, "churn"), past).set_index(past["customer_id"])["score"]
    df = read(out).set_index("customer_id")
    assert set(df.index) == set(want.index)
    np.testing.assert_allclose(df["score"], want.loc[df.index], rtol=0, atol=1e-12)
    latest = base.set_index("customer_id").loc[lambda b: b["_consent"]]
    common = df.index.intersection(latest.index)
    assert (df.loc[common, "score"] != predict(load_champion(champions, "churn"), latest.loc[common])["score"]).any()


def test_segments_filter_the_audience_and_are_exported(champions, copy_of, tmp_path):
    """Once `propel segments` has written the snapshot's segments, --where can use them and the export names them."""
    from propel.analytics import segments

    ws = copy_of(champions)
    day = snapshot(ws).day
    [(_, seg, _)] = list(segments.compute(ws, [day]))
    ws.segments.mkdir(parents=True)
    seg.to_parquet(ws.segments / f"{day.isoformat()}.parquet", index=False)
    value = seg["rfm_segment"].mode()[0]
    out = tmp_path / "segment.csv"
    result = cli(ws, "churn", "--where", f"rfm_segment = '{value}' AND lifecycle_stage <> 'churned'", "--reasons", "0",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    consenting = set(Audience(ws, snapshot(ws)).con.sql("SELECT customer_id FROM base WHERE _consent").df()["customer_id"])
    want = set(seg.query("rfm_segment == @value and lifecycle_stage != 'churned'")["customer_id"]) & consenting
    assert len(df) == len(want) > 0 and set(df["customer_id"]) == want and (df["segment"] == value).all()


def test_chunking_does_not_change_the_export(champions, send_at, tmp_path):
    req = dict(selection=batch.Selection(top=Top.parse("30%")), out=None)
    results = []
    for i, rows in enumerate((97, 100_000)):
        out = tmp_path / f"c{i}.parquet"
        champion = load_champion(champions, "uplift")
        job = batch.score_job(champion, Campaign("email", "discount_10"), send_at, 2)
        batch.run(champions, job, Audience(champions, snapshot(champions)), req["selection"], out, rows)
        results.append(read(out))
    pd.testing.assert_frame_equal(results[0], results[1])
    assert (results[0]["score"] - (results[0]["p_treated"] - results[0]["p_control"])).abs().max() < 1e-12


def test_reason_codes_name_a_planted_driver(champions, base):
    champion = load_champion(champions, "churn")
    model = champion.model
    typical = base.iloc[[0]].copy()
    for f in model.features:
        typical[f] = base[f].mode().iloc[0] if f in model.categories else base[f].median()
    gain = pd.Series(model.booster.feature_importance("gain"), index=model.features)
    typical_score = batch.predict(champion, typical)["score"].iloc[0]
    # the most important numeric feature that moves this typical customer's score materially (a small model's top
    # feature may be flat around the typical customer, and a nudge of a point or so is credited to whichever
    # feature it interacts with): plant its riskiest value, everything else typical
    for driver in gain.drop(list(model.categories)).sort_values(ascending=False).index:
        values = base[driver].quantile(np.linspace(0, 1, 21)).unique()
        variants = pd.concat([typical.assign(**{driver: v}) for v in values], ignore_index=True)
        risky = variants.iloc[[int(np.argmax(batch.predict(champion, variants)["score"]))]]
        if batch.predict(champion, risky)["score"].iloc[0] > typical_score + 0.02:
            break
    else:
        pytest.fail("no numeric feature changes the typical customer's churn score")
    def contributions(row) -> dict[str, float]:
        text = reasons(champion, row, len(model.features))[0]
        return {name: float(v.rstrip(")")) for name, v in (p.rsplit(" (", 1) for p in text.split("; ") if p)}

    # the planted value is what the reasons pick up: the driver's contribution grew the most, and it is a top-3 reason
    risky_c, typical_c = contributions(risky), contributions(typical)
    assert max(risky_c, key=lambda f: risky_c[f] - typical_c.get(f, 0.0)) == driver
    assert driver in reasons(champion, risky, 3)[0]
    # every customer's reasons: model features with positive contributions, largest first
    for text in reasons(champion, base.head(200), 3):
        parts = [p.rsplit(" (", 1) for p in text.split("; ") if p]
        values = [float(v.rstrip(")")) for _, v in parts]
        assert all(name in model.features for name, _ in parts) and all(v > 0 for v in values)
        assert values == sorted(values, reverse=True)


def test_same_scores_as_the_online_path(champions, base, send_at, tmp_path):
    """Batch (offline snapshot) and the service's in-process scorer (online store) agree for the same
    customers and time: scores, deciles, reason codes, model version."""
    ids = base.loc[base["_consent"], "customer_id"].head(40).tolist()
    for task, campaign in (("churn", None), ("uplift", Campaign("email", "bundle"))):
        champion = load_champion(champions, task)
        out = tmp_path / f"{task}.parquet"
        job = batch.score_job(champion, campaign, send_at, 3)
        # the days since count to the send, as the online path counts to its request time
        batch.run(champions, job, Audience(champions, snapshot(champions, at=send_at), f"customer_id IN {tuple(ids)}"),
                  batch.Selection(), out, 1000)
        offline = read(out).set_index("customer_id").loc[ids]
        context = {"campaign_channel": campaign.channel, "offer_type": campaign.offer_type} if campaign else None
        online = pd.DataFrame(CustomerScorer(champions, champion).score(ids, context, 3, send_at)).set_index("customer_id")
        assert (online["status"] == 200).all()
        np.testing.assert_allclose(offline["score"], online["uplift" if task == "uplift" else "probability"], atol=1e-12)
        assert (offline["decile"] == online["decile"]).all()
        assert [r.split(" (")[0] for r in offline["reasons"]] == [r[0]["feature"] for r in online["reasons"]]
        assert (offline["model_version"] == f"{task} v{online['model_version'].iloc[0]}").all()


def test_uplift_persuadables_and_next_best_action(champions, base, refused, send_at, tmp_path):
    offers = load_champion(champions, "uplift").levels["offer_type"]  # what the generated campaigns offered
    out = tmp_path / "persuadables.csv"
    result = cli(champions, "uplift", "--persuadables", "--channel", "email", "--offer", offers[-1], "--send-at",
                 f"{send_at:%Y-%m-%dT%H:%M}", "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    assert len(df) and (df["score"] > 0).all() and {"p_treated", "p_control"} <= set(df.columns)

    actions = tmp_path / "actions.csv"
    pd.DataFrame({"campaign_id": ["cheap", "dear"], "channel": ["email", "email"],
                  "offer_type": [offers[0], offers[-1]], "cost": [0.01, 1e6]}).to_csv(actions, index=False)
    out = tmp_path / "nba.csv"
    result = cli(champions, "nba", "--campaigns", str(actions), "--contact-cap", "1", "--send-at", f"{send_at:%Y-%m-%dT%H:%M}",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    df, summary = read(out), json.loads((tmp_path / "nba.summary.json").read_text())
    assert len(df) and df["customer_id"].is_unique and set(df["campaign_id"]) == {"cheap"}
    assert ((df["score"] - (df["uplift"] * df["order_value"] - df["cost"])).abs() < 1e-9).all() and (df["score"] > 0).all()
    capped = base.loc[base["touches_30d"] >= 1, "customer_id"]
    assert not df["customer_id"].isin(capped).any() and not df["customer_id"].isin(refused).any()
    assert summary["counts"]["outcome"].get("contact cap reached", 0) > 0
    assert sum(summary["counts"]["outcome"].values()) == summary["counts"]["scored"]


@pytest.fixture(scope="module")
def recommender(champions):
    from propel.training import registry
    from propel.training.recommender_model import load_recommender

    if registry.champion_version(registry.tracking(champions), "recommender") is None:
        pytest.skip("the champions fixture has no recommender champion")
    return load_recommender(champions)[0]


def test_batch_recommendations(champions, recommender, refused, tmp_path, copy_of):
    ws = copy_of(champions)  # the export logs its lists there
    out = tmp_path / "recs.parquet"
    result = cli(ws, "recommender", "--k", "5", "--where", "city_tier = 1", "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    assert set(served_log.read(ws)["recommendation_id"]) == set(df["recommendation_id"])
    assert served_log.read(champions) is None, "the shared workspace is left as it was"
    assert len(df) and not df["customer_id"].isin(refused).any() and df.groupby("customer_id")["rank"].max().max() <= 5
    want = recommender.batch(df["customer_id"].unique().tolist(), 5)
    pd.testing.assert_frame_equal(df[["customer_id", "rank", "item_id", "score"]].reset_index(drop=True),
                                  want[["customer_id", "rank", "item_id", "score"]], check_dtype=False)


def test_item_audience_ranks_customers_by_the_recommender(champions, recommender, base, tmp_path):
    known = [c for c in base["customer_id"] if recommender.knows_customer(c)]
    item = recommender.recommend(known[0], 1).items[0]
    out = tmp_path / "launch.csv"
    result = cli(champions, "recommender", "--item", item, "--top", "50", "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    assert 0 < len(df) <= 50 and df["score"].is_monotonic_decreasing
    for row in df.head(10).itertuples():
        assert row.score == pytest.approx(recommender.recommend(row.customer_id, 1, allowed_items=[item]).scores[0])
    assert "unknown customer" in result.output or all(recommender.knows_customer(c) for c in base["customer_id"])

    con = Lake(champions).connect()
    category = con.execute("SELECT category FROM items WHERE item_id = ?", [item]).fetchall()[0][0]
    in_category = {r[0] for r in con.execute("SELECT item_id FROM items WHERE category = ?", [category]).fetchall()}
    out = tmp_path / "category.parquet"
    result = cli(champions, "recommender", "--category", category, "--top", "30", "--out", str(out))
    assert result.exit_code == 0, result.output
    df = read(out)
    assert 0 < len(df) <= 30 and df["score"].is_monotonic_decreasing and set(df["item_id"]) <= in_category
    for row in df.head(5).itertuples():
        best = recommender.recommend(row.customer_id, 1, category=category)
        assert (best.items[0], best.scores[0]) == (row.item_id, pytest.approx(row.score))


@pytest.mark.parametrize("args, message", [
    (["chrun"], "unknown task 'chrun'; choose one of churn, propensity, uplift, recommender, nba"),
    (["churn", "--where", "citytier = 1"], "unknown column 'citytier'; did you mean city_tier?"),
    (["churn", "--where", "city_tier = (SELECT 1)"], "is not allowed"),
    (["churn", "--where", "1 = 1; DROP TABLE x"], "expected one condition"),
    (["churn", "--where", "membership_tier > 5"],
     "--where 'membership_tier > 5': Binder Error: Cannot compare values of type VARCHAR"),
    (["churn", "--top", "120%"], "--top: expected a share like 10%"),
    (["churn", "--persuadables"], "--persuadables does not apply to 'churn'"),
    (["propensity"], "propensity scores depend on what is sent: pass --channel and --offer"),
    (["uplift", "--channel", "fax", "--offer", "bundle"], "--channel: campaign_channel 'fax' was not seen in training"),
    (["churn", "--as-of", "2000-01-01"], "no feature snapshot on or before it"),
    (["churn", "--out", "x.xlsx"], "write .csv or .parquet"),
    (["nba", "--engine", "spark"], "--engine spark scores churn, propensity, uplift; 'nba' runs on this machine only"),
])
def test_bad_arguments_exit_2(champions, args, message):
    result = cli(champions, *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_out_inside_the_workspace_data_is_refused(champions, copy_of, tmp_path):
    """Issue 17: `--out data/lake/customers/L000001.parquet` replaced the CRM table with scores. Any path
    inside the workspace's data, Feast or MLflow folders is refused (symlinks and `..` resolved), exit 2, and
    the lake is unchanged."""
    ws = copy_of(champions)
    lake = {p: p.read_bytes() for p in sorted(ws.lake.rglob("*")) if p.is_file()}
    target = next(p for p in lake if p.suffix == ".parquet")
    result = cli(ws, "churn", "--out", str(target))
    assert result.exit_code == 2 and "inside the workspace's lake folder" in " ".join(result.output.split())
    assert {p: p.read_bytes() for p in sorted(ws.lake.rglob("*")) if p.is_file()} == lake
    (tmp_path / "link").symlink_to(ws.lake)
    (tmp_path / "exports").mkdir()
    for out in (tmp_path / "link" / "scores.csv", ws.data / "scores.csv", ws.features / ".." / "lake" / "s.parquet",
                ws.mlruns / "scores.csv", ws.feast_data / "scores.parquet"):
        with pytest.raises(ValueError, match="inside the workspace's"):
            batch.output_format(ws, out)
    assert batch.output_format(ws, tmp_path / "exports" / ".." / "scores.csv") == "csv"


def test_csv_exports_escape_formula_cells(champions, copy_of, tmp_path):
    """OWASP's CSV-injection advice in every CSV export (scores, recommendations): text cells starting with
    = + - @ or a tab get a leading quote; numbers stay numbers; Parquet keeps the values as they are."""
    ws = copy_of(champions)
    snap = snapshot(ws)
    planted = ['=HYPERLINK("http://evil.example","open")', "+SUM(1)", "-2+3", "@cmd", "\tTAB"]
    table = ws.customer_snapshots / f"{snap.day}.parquet"  # the newest rows: the planted ids are read as of it
    df = pd.read_parquet(table)
    df.loc[df.index[:len(planted)], "customer_id"] = planted
    df.to_parquet(table, index=False)
    for task, out in (("churn", tmp_path / "scores.csv"), ("recommender", tmp_path / "recs.csv")):
        result = cli(ws, task, "--ignore-consent", "--out", str(out), *(["--reasons", "0"] if task == "churn" else []))
        assert result.exit_code == 0, result.output
        got = pd.read_csv(out, keep_default_na=False)
        assert {"'" + p for p in planted} <= set(got["customer_id"]), task
        assert not got.select_dtypes("object").apply(lambda c: c.str.match(r"^[=+\-@\t\r]")).any().any(), task
        assert pd.api.types.is_float_dtype(got["score"])
    result = cli(ws, "churn", "--ignore-consent", "--reasons", "0", "--out", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 0 and set(planted) <= set(read(tmp_path / "scores.parquet")["customer_id"])


def test_no_champion_is_a_clear_error(champions, tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(champions.features, ws.features)  # features, but no models
    result = cli(ws, "churn")
    assert result.exit_code == 2 and "no champion model for 'churn'" in result.output


def test_where_language_is_a_whitelist():
    cols = ["city_tier", "gender"]
    assert where_sql("City_Tier >= 2 AND lower(gender) LIKE 'f%'", cols) == '"city_tier" >= 2 AND LOWER("gender") LIKE \'f%\''
    for bad in ("read_parquet('/etc/passwd') IS NOT NULL", "city_tier IN (SELECT 1)", "gender = current_setting('x')"):
        with pytest.raises(ValueError, match="not allowed|unknown column"):
            where_sql(bad, cols)


def test_batch_scoring_imports_neither_feast_nor_torch(champions, send_at, tmp_path):
    """`propel score` starts in seconds: Feast, torch, BentoML and our Spark path are imported only by the paths
    that need them (the calendar features of --send-at come from propel.features.request_features, not from Feast).
    MLflow imports pyspark's type module by itself when installed."""
    out = tmp_path / "uplift.parquet"
    args = ["--workspace", str(champions.root), "score", "uplift", "--channel", "email", "--offer", "bundle",
            "--send-at", f"{send_at:%Y-%m-%dT%H:%M}", "--reasons", "1", "--out", str(out)]
    code = (f"import sys; from propel.cli import app; app({args!r}, standalone_mode=False); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'feast', 'torch', 'bentoml'} | "
            "({'propel.serving.spark'} & set(sys.modules))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert any(f.startswith("request_") for f in load_champion(champions, "uplift").model.features)


def test_batch_model_input_equals_the_pandas_path(champions, base, send_at):
    """Batch chunks (1000 rows and more) encode categoricals through pandas' hash table, requests value by
    value: both give the numbers `prepare` gives, also for missing, unseen and non-text values."""
    for task, campaign in (("churn", None), ("uplift", Campaign("email", "bundle"))):
        champion = load_champion(champions, task)
        df = base.sample(2500, replace=True, random_state=7).reset_index(drop=True)
        df = df.assign(**batch.context(champion, campaign, send_at))
        cats = list(champion.levels)
        df[cats[0]] = df[cats[0]].astype(object)
        df.loc[:5, cats[0]] = [None, np.nan, "never-seen", 3, pd.NA, champion.levels[cats[0]][0]]
        df[cats[-1]] = pd.Series(np.resize([champion.levels[cats[-1]][0], 2.0, None, "x"], len(df)), dtype=object)
        for clf in ([champion.model.treated, champion.model.control] if task == "uplift" else [champion.model]):
            assert np.array_equal(clf.raw_score(df), clf.booster.predict(prepare(df, clf.features, clf.categories)))
            pieces = np.vstack([clf.matrix(df.iloc[i:i + 400]) for i in range(0, len(df), 400)])
            assert np.array_equal(clf.matrix(df), pieces, equal_nan=True)
        if task == "uplift":  # both arms scored from one encoding when they know the same levels
            model, pred = champion.model, predict(champion, df)
            for arm, column in ((model.treated, "p_treated"), (model.control, "p_control")):
                raw = arm.booster.predict(prepare(df, arm.features, arm.categories))
                want = arm.calibrator.predict(raw) if arm.calibrator is not None else raw
                assert np.array_equal(pred[column].to_numpy(), want)


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from propel.serving import spark as sp

    session = sp.session("local[1]", **{"spark.sql.shuffle.partitions": "1",  # small data: start fast
                                        "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"})
    yield session
    session.stop()


def test_spark_scores_equal_the_single_machine_path(champions, base, send_at, spark):
    from propel.serving import spark as sp

    where, campaign = "days_since_last_purchase < 120", Campaign("email", "discount_10")
    got = sp.score(spark, champions, "uplift", where=where, campaign=campaign, send_at=send_at).toPandas()
    champion = load_champion(champions, "uplift")
    audience = base.query("days_since_last_purchase < 120 and _consent")
    want = predict(champion, audience.assign(**batch.context(champion, campaign, send_at)))
    want.index = audience["customer_id"].to_numpy()
    want["decile"] = champion.deciles(want["score"].to_numpy())
    got = got.set_index("customer_id").loc[want.index]
    assert len(got) == len(audience) > 0
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["p_treated"].to_numpy(), want["p_treated"].to_numpy(), rtol=0, atol=1e-12)
    assert (got["decile"].to_numpy() == want["decile"].to_numpy()).all()


def test_spark_engine_from_the_cli_exports_the_same_file(champions, send_at, spark, tmp_path):
    """`propel score --engine spark`: scores from Spark, then the same ranking, selection, reasons and export."""
    args = ["uplift", "--channel", "email", "--offer", "discount_10", "--send-at", f"{send_at:%Y-%m-%dT%H:%M}",
            "--where", "days_since_last_purchase < 120 AND city_tier <= 2", "--top", "30%", "--reasons", "2"]
    got = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.parquet"
        result = cli(champions, *args, "--engine", engine, "--out", str(out))
        assert result.exit_code == 0, result.output
        got[engine] = read(out), json.loads((tmp_path / f"{engine}.summary.json").read_text())
    (local, local_summary), (spark_df, spark_summary) = got["local"], got["spark"]
    assert len(local) > 0 and local["reasons"].str.len().gt(0).any()
    pd.testing.assert_frame_equal(spark_df, local, check_exact=False, rtol=0, atol=1e-12)
    assert spark_summary["counts"] == local_summary["counts"] and spark_summary["selection"]["engine"] == "spark"

"""Shape 4 of real customer data: a sparse, long interaction log (years of ratings/views, a few hundred
users, only a handful active in any month; items with a category and a year). The recommender has to
validate by holding out each customer's latest items (no temporal window holds enough customers), beat
popularity by 25% there, and serve; too few customers is a clear error with exit code 2."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.cli import app
from propel.config import Workspace
from propel.training import registry
from tests.helpers import BIN, start, stop

runner = CliRunner()
FAST = "[recommend]\nseq_seconds = 15\nbpr_iterations = 30\n"


def sparse_log(raw: Path, customers: int, items: int = 3000, per_customer: float = 20, categories: int = 15,
               years: int = 6, seed: int = 4) -> Path:
    """Raw files of a ratings log: each customer rates items (a `product_view` with a `rating`, kept as an
    extra column; a median of `per_customer`, at least 2) over one or two short active spells at a random
    time in `years`; 80% of their items come from two favourite categories, the rest from the whole
    catalogue, popular items more often."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    start_at, span = pd.Timestamp("2017-01-01", tz="UTC"), years * 365 * 86_400
    category = rng.integers(0, categories, items)
    appeal = 1 / rng.permutation(np.arange(1, items + 1)) ** 0.9
    item_ids = np.array([f"m{i:05d}" for i in range(items)])
    pd.DataFrame({"item_id": item_ids, "category": [f"genre{c:02d}" for c in category],
                  "year": rng.integers(1970, 2023, items)}).to_csv(raw / "items.csv", index=False)
    rows = []
    for u in range(customers):
        first, second = rng.choice(categories, 2, replace=False)
        taste = (0.55 * (category == first) / (category == first).sum() + 0.25 * (category == second) / (category == second).sum()
                 + 0.2 / items) * appeal
        chosen = rng.choice(items, int(np.clip(rng.lognormal(np.log(per_customer), 0.9), 2, min(items, 20 * per_customer))), replace=False, p=taste / taste.sum())
        spells = [rng.integers(0, span - 120 * 86_400)]
        if rng.random() < 0.15:  # some come back years later
            spells.append(rng.integers(spells[0], span - 30 * 86_400))
        sessions = np.concatenate([s + rng.integers(0, 90 * 86_400, rng.integers(1, 4)) for s in spells])
        at = np.sort(rng.choice(sessions, len(chosen))) + np.arange(len(chosen)) * 180  # 3 minutes apart
        rows += [(f"e{u}_{k}", (start_at + pd.Timedelta(seconds=int(t))).isoformat(), f"c{u:04d}", "web", "product_view",
                  item_ids[i], int(rng.integers(1, 6))) for k, (i, t) in enumerate(zip(chosen, at))]
    pd.DataFrame(rows, columns=["event_id", "ts", "customer_id", "channel", "event_type", "item_id", "rating"]
                 ).to_csv(raw / "events.csv", index=False)
    pd.DataFrame({"customer_id": [f"c{u:04d}" for u in range(customers)], "signup_at": start_at.isoformat(),
                  "marketing_consent": "yes", "occupation": rng.choice(["student", "engineer", "artist"], customers)}
                 ).to_csv(raw / "customers.csv", index=False)
    return raw


def cli(ws: Path, *args: str):
    result = runner.invoke(app, ["--workspace", str(ws), *args])
    assert result.exit_code == 0, result.output
    return result


def test_too_few_customers_is_a_clear_error(tmp_path):
    ws = tmp_path / "ws"
    cli(ws, "ingest", str(sparse_log(tmp_path / "raw", customers=80)))
    result = runner.invoke(app, ["--workspace", str(ws), "train", "recommender"])
    assert result.exit_code == 2, result.output
    assert "only 80 customers have interactions with at least 2 distinct items" in " ".join(result.output.split())
    assert "at least 100 are needed" in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.slow
def test_sparse_log_trains_validates_by_latest_items_and_serves(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "propel.toml").write_text(FAST)
    raw = sparse_log(tmp_path / "raw", customers=420)
    events = pd.read_csv(raw / "events.csv", parse_dates=["ts"])
    recent = events[events["ts"] >= events["ts"].max() - pd.Timedelta(days=28)]
    assert recent["customer_id"].nunique() < 10, "the shape: only a handful of customers in the last window"
    cli(root, "ingest", str(raw))
    for step in ("build", "apply", "materialize"):
        cli(root, "features", step)
    trained = " ".join(cli(root, "train", "recommender").output.split())
    assert "champion" in trained and "validation: leave-last-20%-out per customer" in trained, trained

    ws = Workspace.resolve(root)
    client = registry.tracking(ws)
    champion = registry.champion_version(client, "recommender")
    run = client.get_run(champion.run_id)
    assert run.data.params["protocol"] == "leave_last_out" and run.data.tags["propel.protocol"] == "leave_last_out"
    m = run.data.metrics
    assert m["ndcg_at_10"] >= 1.25 * m["popular_ndcg_at_10"], {k: v for k, v in m.items() if k.endswith("ndcg_at_10")}
    assert m["ndcg_at_10"] > 5 * m["random_ndcg_at_10"]

    cli(root, "score", "recommender", "--out", str(tmp_path / "recs.csv"))
    exported = pd.read_csv(tmp_path / "recs.csv")
    assert exported["customer_id"].nunique() == events["customer_id"].nunique()

    customer = events["customer_id"].value_counts().index[0]
    proc, url = start([BIN / "propel", "--workspace", root, "serve", "--workers", "1"], tmp_path / "server.log")
    try:
        body = httpx.post(f"{url}/recommend", json={"customer_id": customer, "k": 10}, timeout=30).json()
    finally:
        stop(proc)
    got = [i["item_id"] for i in body["items"]]
    assert body["fallback"] is False and len(got) == 10 and body["model_version"] == str(champion.version)
    assert not set(got) & set(events.loc[events["customer_id"] == customer, "item_id"]), "nothing they already rated"

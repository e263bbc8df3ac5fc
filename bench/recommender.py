"""Recommender speed at scale for `bench/run.py` (scale `recommender`): ALS training on 1M customers x
50k items x ~20M interactions (target <= 5 min), `Recommender.recommend` latency for a 50k-item
catalogue (target p99 <= 1 ms in-process) and batch top-10 for 1M customers (target <= 2 min).

The interactions are synthetic (speed does not need realistic taste, only realistic shape): Zipf item
popularity within 20 categories, each customer mostly in one category, ~20 distinct items per customer
(views weigh 1, carts 3, purchases 5; repeats summed). Stages, each its own process (timed by bench/run.py, figures
of the timed part written to BASE/<stage>.json):
  python bench/recommender.py setup BASE     the synthetic matrix (cached in BASE/matrix.npz)
  python bench/recommender.py fit BASE       ALS with the default settings (factors, alpha, iterations)
  python bench/recommender.py serve BASE     package (fold-in of every customer), recommend(), batch()
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from propel.config import RecommendSettings  # noqa: E402
from propel.training.interactions import Histories, Interactions  # noqa: E402
from propel.training.rec_models import ALS  # noqa: E402
from propel.training.recommender_model import Recommender  # noqa: E402

CUSTOMERS, ITEMS, PER_CUSTOMER, CATEGORIES = 1_000_000, 50_000, 24, 20  # 24 draws -> ~20M distinct pairs
CALLS = 3_000  # recommend() calls per latency figure


def stages(base: Path, run) -> list[dict]:
    """Each stage as its own process (`run(label, cmd)` from bench/run.py), with its in-process figures."""
    rows = []
    for stage, label in (("setup", "synthetic 1M x 50k matrix"), ("fit", "ALS fit"),
                         ("serve", "package + recommend() + batch top-10")):
        rows.append(run(f"recommender {label}", [sys.executable, __file__, stage, base]))
        extra = base / f"{stage}.json"
        if extra.exists():
            rows[-1].update(json.loads(extra.read_text()))
    return rows


def setup(base: Path) -> dict:
    path = base / "matrix.npz"
    if path.exists():
        m = sp.load_npz(path)
        return {"customers": m.shape[0], "items": m.shape[1], "interactions": m.nnz}
    rng = np.random.default_rng(0)
    category = rng.integers(0, CATEGORIES, ITEMS)
    weight = 1 / (1 + rng.permutation(ITEMS)) ** 1.0  # Zipf popularity
    order = np.argsort(category, kind="stable")
    c, w = category[order], weight[order]
    cum = c + (np.cumsum(w) - np.r_[0, np.cumsum(np.bincount(c, w))][c]) / np.bincount(c, w)[c]
    n = rng.poisson(PER_CUSTOMER - 1, CUSTOMERS) + 1
    user = np.repeat(np.arange(CUSTOMERS, dtype=np.int32), n)
    main = rng.integers(0, CATEGORIES, CUSTOMERS)
    cat = np.where(rng.random(len(user)) < 0.7, main[user], rng.integers(0, CATEGORIES, len(user)))
    item = order[np.minimum(np.searchsorted(cum, cat + rng.random(len(user)), side="right"), ITEMS - 1)]
    value = rng.choice(np.array([1, 3, 5], np.float32), len(user), p=[0.85, 0.10, 0.05])
    m = sp.csr_matrix((value, (user, item)), shape=(CUSTOMERS, ITEMS), dtype=np.float32)
    m.sum_duplicates()
    base.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, m, compressed=False)
    np.save(base / "category.npy", category)
    return {"customers": CUSTOMERS, "items": ITEMS, "interactions": m.nnz}


def interactions(m: sp.csr_matrix) -> Interactions:
    """The matrix as one event per (customer, item), which is all ALS reads."""
    return Interactions(m.shape[1], m.indptr, m.indices, m.data, m.data >= 5, np.zeros(m.nnz, np.int64))


def fit(base: Path) -> dict:
    cfg = RecommendSettings()
    m = sp.load_npz(base / "matrix.npz").tocsr()
    params = {"factors": cfg.als_factors, "regularization": cfg.als_regularization, "alpha": cfg.als_alpha,
              "iterations": cfg.als_iterations}
    started = time.perf_counter()
    als = ALS(**params).fit(interactions(m), cfg, seed=0)
    seconds = time.perf_counter() - started
    np.save(base / "item_factors.npy", als.item_factors)
    return {"fit_seconds": round(seconds, 1), "interactions": m.nnz, **params, "threads": cfg.threads}


def latency(fn, calls: int) -> dict:
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    arr = np.array(times[50:])  # the first calls warm caches
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3)}


def serve(base: Path) -> dict:
    cfg = RecommendSettings()
    m = sp.load_npz(base / "matrix.npz").tocsr()
    rng = np.random.default_rng(1)
    category = np.load(base / "category.npy")
    als = ALS(cfg.als_factors, cfg.als_regularization, cfg.als_alpha, cfg.als_iterations)
    als.item_factors, als.confidence, als.threads = np.load(base / "item_factors.npy"), cfg.confidence, cfg.threads
    customers = np.array([f"C{i:07d}" for i in range(m.shape[0])], dtype=object)
    items = np.array([f"I{i:05d}" for i in range(m.shape[1])], dtype=object)
    catalog = pd.DataFrame({"category": [f"cat{c}" for c in category],
                            "price": np.round(rng.lognormal(3, 0.7, len(items)), 2), "in_stock": rng.random(len(items)) < 0.95})
    popularity = np.asarray((m > 0).sum(axis=0)).ravel().astype(np.float32)
    started = time.perf_counter()
    rec = Recommender(als, customers, items, Histories(m), sp.csr_matrix(m >= 5), catalog, popularity,
                      popularity > 0, cfg)
    out = {"package_seconds": round(time.perf_counter() - started, 1), "catalogue_items": len(items)}
    who = customers[rng.integers(0, len(customers), CALLS)]
    out["recommend_top10"] = latency(lambda i: rec.recommend(who[i], 10), CALLS)
    out["recommend_top10_category_price"] = latency(
        lambda i: rec.recommend(who[i], 10, category=f"cat{i % CATEGORIES}", max_price=50.0), CALLS)
    fresh = items[rng.integers(0, len(items), (CALLS, 3))].tolist()
    out["recommend_top10_fold_in_3_fresh"] = latency(lambda i: rec.recommend(who[i], 10, fresh_items=fresh[i]), 500)
    out["similar_items_top10"] = latency(lambda i: rec.similar_items(items[i], 10), 500)
    started = time.perf_counter()
    table = rec.batch(customers.tolist(), 10)
    out["batch_top10_seconds"] = round(time.perf_counter() - started, 1)
    out["batch_rows"] = len(table)
    return out


if __name__ == "__main__":
    stage, base = sys.argv[1], Path(sys.argv[2])
    figures = {"setup": setup, "fit": fit, "serve": serve}[stage](base)
    (base / f"{stage}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))

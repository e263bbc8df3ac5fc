"""Online read latency (in-process) and training-set retrieval time, for `bench/run.py`.

Usage: python bench/feature_reads.py WORKSPACE  -> writes WORKSPACE/bench_feature_reads.json
"""

from __future__ import annotations

import gc
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from propel.featurestore import store as fstore
from propel.features.asof import as_of
from propel.features.build import load_catalog
from propel.config import Workspace
from propel.training.tasks import SERVICES

SERVICE = SERVICES["churn"]


def p99_ms(fn, calls: int) -> dict:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    arr = np.array(times[5:])  # the first calls warm caches
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3)}


def main(ws_dir: str) -> None:
    ws = Workspace.resolve(ws_dir)
    latest = load_catalog(ws)["cutoffs"][-1]
    ids = as_of(ws, date.fromisoformat(latest), columns=[])["customer_id"]
    rng = np.random.default_rng(0)
    out = {}
    for online in ("redis", "sqlite"):  # Redis first: SQLite's 25 GB file at 1M churns the page cache
        store = fstore.feature_store(ws, online)
        # as the server does once loaded (propel/serving/service.py `_freeze`): otherwise the collector's full
        # passes scan every object loaded so far (the ids, Feast's registry), 100+ ms pauses in a p99
        gc.collect()
        gc.freeze()
        one = lambda: fstore.online_features(store, SERVICE, [ids.iloc[rng.integers(len(ids))]])  # noqa: E731
        hundred = lambda: fstore.online_features(store, SERVICE, list(ids.iloc[rng.integers(len(ids), size=100)]))  # noqa: E731
        out[f"online_1_{online}"] = p99_ms(one, 300)
        out[f"online_100_{online}"] = p99_ms(hundred, 300)  # a p99 of fewer calls is their slowest one or two
    n = min(1_000_000, len(ids) * 4)
    cutoffs = pd.to_datetime(load_catalog(ws)["cutoffs"][-4:])
    entity = pd.DataFrame({"customer_id": ids.sample(n, replace=True, random_state=0).to_numpy(),
                           "event_timestamp": cutoffs[rng.integers(len(cutoffs), size=n)]})
    t0 = time.perf_counter()
    frame = fstore.historical_features(fstore.feature_store(ws), SERVICE, entity)
    out["training_set"] = {"rows": len(frame), "columns": frame.shape[1], "seconds": round(time.perf_counter() - t0, 2)}
    (Path(ws_dir) / "bench_feature_reads.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])

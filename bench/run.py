"""`make bench`: throughput and peak memory of each pipeline stage at scale; updates docs/benchmarks.md.

Each stage runs as its own child process so its wall time and peak RSS are its own. Scales:
  ingest-1m / ingest-10m   ingestion of ~1M and ~10M generated events (target: 10M in <= 60 s, <= 4 GiB)
  features-1m              1M customers / ~50M events: feature build, materialize, reads, training set, churn fit,
                           batch score
  scale-20k / scale-200k   the same stages at 20k and 200k customers (docs/scale.md: each stage's cost by scale)
  score-1m                 batch scoring: 1M customers scored and exported by `propel score` (bench/score.py)
  serve                    the HTTP service under load on loopback (wrk), demo-size models (bench/serve.py)
  recommender              ALS fit 1M x 50k x 20M, recommend() latency, batch top-10 for 1M (bench/recommender.py)
  recommender-sparse       shape 4: a sparse, long ratings log (610 users, years), protocol and NDCG@10 vs popularity
                           (bench/recommender_sparse.py)
  shapes                   each real-data shape of issue 16 end to end: protocol used, model vs baselines (bench/shapes.py)
  realtime                 POST /events over HTTP into the embedded log: events/s, zero lost, kill -9 (bench/intake.py)
  freshness                the real-time path on the demo workspace: freshness and /recommend p99 under 1,000 events/s,
                           kill -9 of the consumer and the server, the stream state's size (bench/freshness.py)
Pick with `BENCH=ingest-1m,ingest-10m make bench` (default: all); `BENCH_REUSE_LAKE=1` keeps a scale's lake
from an earlier run and re-runs only the stages after ingestion. Results: bench/results/<stamp>.json, merged
into bench/reference.json, from which docs/benchmarks.md's tables are rendered (bench/report.py).
The machine this ran on is recorded with the figures; compare ratios within one run, not across runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import freshness as freshness_bench  # bench/freshness.py
import intake as intake_bench  # bench/intake.py
import score as score_bench  # bench/score.py
from common import free_port, machine, wait_for_port  # bench/common.py
import recommender as recommender_bench  # bench/recommender.py
import recommender_sparse as recommender_sparse_bench  # bench/recommender_sparse.py
import report  # bench/report.py
import serve as serve_bench  # bench/serve.py
import shapes as shapes_bench  # bench/shapes.py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = Path(os.environ.get("BENCH_DIR", ROOT / "bench" / "work"))
RESULTS = ROOT / "bench" / "results"
# name -> (customers, days): ~50 events per person-year in the generator
SCALES = {"ingest-1m": (20_000, 365), "ingest-10m": (200_000, 365), "features-1m": (1_000_000, 365),
          "scale-20k": (20_000, 365), "scale-200k": (200_000, 365),  # docs/scale.md, with features-1m
          "score-1m": (20_000, 365),  # a champion trained on 20k people, scoring 1M synthetic customers
          "serve": (20_000, 365),  # the demo's models behind HTTP
          "recommender": (1_000_000, 0),  # synthetic interactions, no generated history
          "recommender-sparse": (610, 0),  # shape 4 of issue 16, built by its test's builder
          "shapes": (0, 0),  # sizes per shape in bench/shapes.py
          "realtime": (0, 0),  # POST /events into a fresh workspace (bench/intake.py)
          "freshness": (20_000, 365)}  # the `serve` demo workspace, events and /recommend together (bench/freshness.py)
# DuckDB working memory for the ingest per scale (propel.toml, removed once the lake is in): 50M events need more
# than the laptop default to stage; the stages after it run with the default
MEMORY = {"features-1m": "4.5GB"}


def run(label: str, cmd: list[str], env: dict | None = None) -> dict:
    """Run one stage; return wall seconds and the child's peak RSS."""
    os.sync()  # the previous stage's dirty pages (e.g. a 25 GB SQLite store) are written back on its time
    print(f"[bench] {label}: {' '.join(map(str, cmd))}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"[bench] {label} failed with exit code {code}")
    return {"stage": label, "seconds": round(seconds, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3)}


@contextlib.contextmanager
def redis_server(workdir: Path):
    """A throwaway redis-server on a free loopback port for the Redis online-store stages."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("[bench] redis-server not found: apt-get install redis-server")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def lake_events(ws: Path) -> int:
    manifests = sorted((ws / "data" / "lake" / "manifests").glob("*.json"))
    return sum(json.loads(m.read_text())["tables"].get("events", {}).get("input", 0) for m in manifests)


def latest_entities(ws: Path) -> int:
    """Customers in the features as of the newest cutoff: the entities a materialization loads."""
    import duckdb

    from propel.config import Workspace
    from propel.features.asof import as_of_sql
    from propel.features.build import load_catalog

    w = Workspace.resolve(ws)
    latest = date.fromisoformat(load_catalog(w)["cutoffs"][-1])
    return duckdb.sql(f"SELECT count(*) FROM ({as_of_sql(w, latest)})").fetchall()[0][0]


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_scale(name: str) -> list[dict]:
    customers, days = SCALES[name]
    base = WORK / name
    raw, ws = base / "raw", base / "ws"
    propel = [BIN / "propel", "--workspace", ws]
    rows = []
    if os.environ.get("BENCH_REUSE_LAKE") and (ws / "data" / "lake").exists():
        # re-measure the later stages on the lake of an earlier run (a 50M-event ingest takes many minutes)
        print(f"[bench] {name}: reusing the lake in {ws}; feature tables and online stores start empty", flush=True)
        for state in (ws / "data" / "features", ws / "data" / "feast"):
            shutil.rmtree(state, ignore_errors=True)
        (ws / "propel.toml").unlink(missing_ok=True)
    else:
        if not (raw / "_truth").exists():
            shutil.rmtree(raw, ignore_errors=True)
            rows.append(run(f"{name} generate", [BIN / "propel", "generate", "--customers", customers, "--days", days,
                                                "--format", "parquet", raw]))
        shutil.rmtree(ws, ignore_errors=True)
        if name in MEMORY:
            ws.mkdir(parents=True)
            (ws / "propel.toml").write_text(f'duckdb_memory_limit = "{MEMORY[name]}"\n')
        rows.append(run(f"{name} ingest", [*propel, "ingest", raw]))
        (ws / "propel.toml").unlink(missing_ok=True)
        events = lake_events(ws)
        rows[-1]["events"] = events
        rows[-1]["events_per_s"] = round(events / rows[-1]["seconds"])
    if name.startswith(("features", "scale")):
        with redis_server(base / "redis") as url:
            rows += feature_stages(name, ws, propel, {"PROPEL_REDIS_URL": url})
    return rows


def feature_stages(name: str, ws: Path, propel: list, env: dict) -> list[dict]:
    """Build, apply (both stores), materialize into SQLite and Redis, then read latency and a training set."""
    rows = [run(f"{name} features build", [*propel, "features", "build"])]
    rows[-1]["feature_bytes"] = tree_bytes(ws / "data" / "features")
    for online in ("sqlite", "redis"):
        rows.append(run(f"{name} features apply {online}", [*propel, "features", "apply", "--online", online], env))
        rows.append(run(f"{name} materialize {online}", [*propel, "features", "materialize", "--online", online], env))
        rows[-1]["entities"] = latest_entities(ws)  # the target is per 1M customers
    # the least SQLite itself needs for Feast's layout, to read the SQLite materialization figure against
    floor = run(f"{name} sqlite insert floor", [sys.executable, ROOT / "bench" / "materialize.py", "--sqlite-floor", ws])
    rows.append({**floor, **json.loads((ws / "bench_sqlite_floor.json").read_text())})
    rows.append(run(f"{name} online reads + training set", [sys.executable, ROOT / "bench" / "feature_reads.py", ws],
                    env))
    extra = ws / "bench_feature_reads.json"
    if extra.exists():
        rows[-1].update(json.loads(extra.read_text()))
    # issue 4: labels + training set from Feast + LightGBM fit and evaluation (train.max_rows bounds memory)
    rows.append(run(f"{name} train churn", [*propel, "train", "churn"], env))
    # every customer scored by the new champion and exported, as a marketer's full audience
    rows.append(run(f"{name} score churn", [*propel, "score", "churn", "--reasons", "0", "--out",
                                            ws / "bench_scores.parquet"], env))
    return rows


def main() -> None:
    chosen = [s for s in os.environ.get("BENCH", ",".join(SCALES)).split(",") if s]
    unknown = set(chosen) - set(SCALES)
    if unknown:
        raise SystemExit(f"unknown BENCH scale(s) {sorted(unknown)}; choose from {list(SCALES)}")
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "rows": []}
    for name in chosen:
        stages = {"score-1m": score_bench.stages, "serve": serve_bench.stages,
                  "recommender": recommender_bench.stages,
                  "recommender-sparse": recommender_sparse_bench.stages, "shapes": shapes_bench.stages,
                  "realtime": intake_bench.stages, "freshness": freshness_bench.stages}.get(name)
        result["rows"] += stages(WORK / name, run) if stages else bench_scale(name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{result['when'].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    report.update(result)
    print(f"[bench] wrote {out}, merged it into {report.REFERENCE} and rendered {report.DOC}")


if __name__ == "__main__":
    main()

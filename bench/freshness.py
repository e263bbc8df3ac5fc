"""Freshness of the real-time path (issue 19): seconds from `POST /events` answered to `/recommend` and
`/score/churn` reflecting the event, p50/p99, while events arrive at ~1,000/s (batches of 100) and /recommend
serves ~200 RPS (open loop), with the stream consumer inside `propel serve`. Targets: freshness p99 <= 1 s,
/recommend p99 <= 10 ms during that load.

Probes, a few per second: a new device views an item, then /recommend of its profile is polled every 10 ms until
it is a session list (no fallback); a known customer buys, then /score/churn is polled until its probability moves.
It runs on a scratch copy of the workspace (its event log, real-time rows and the re-applied Feast registry are
the copy's; the lake is linked, not copied), for SECONDS (default 20).

`python bench/freshness.py [WORKSPACE]` (default: the `make bench-serve` demo workspace, built when missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common import BIN, ROOT, propel, start_server, stop_server  # bench/common.py

sys.path.insert(0, str(ROOT))
SECONDS = float(os.environ.get("FRESHNESS_SECONDS", 20))
EVENTS_PER_SECOND, BATCH, RECOMMEND_RPS, PROBES_PER_SECOND = 1000, 100, 200, 4


def scratch(source: Path, into: Path) -> Path:
    """A copy of the workspace that serving may write (lake and raw files linked), with the real-time view applied."""
    ws = into / "ws"
    shutil.copytree(source, ws, ignore=shutil.ignore_patterns("lake", "raw", "stream", "served_recommendations"))
    for name in ("lake", "raw"):
        if (source / "data" / name).exists():
            (ws / "data" / name).symlink_to(source / "data" / name)
    with (ws / "propel.toml").open("a") as fh:
        fh.write("\n[serve]\nreload_seconds = 0\n")
    propel("--workspace", ws, "features", "apply")
    return ws


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


async def load(client, customers: list[str], items: list[str], stop: float, latencies: list[float]) -> int:
    """Background events at EVENTS_PER_SECOND and /recommend at RECOMMEND_RPS, both open loop."""
    sent = 0

    async def events():
        nonlocal sent
        tick, n = time.monotonic(), 0
        while tick < stop:
            body = [{"event_id": uuid.uuid4().hex, "ts": now(), "channel": "web", "event_type": "product_view",
                     "customer_id": f"bench-bg-{(n + i) % 5000}", "item_id": items[(n + i) % len(items)]}
                    for i in range(BATCH)]
            n += BATCH
            r = await client.post("/events", json={"events": body})
            sent += r.json()["accepted"]
            tick += BATCH / EVENTS_PER_SECOND
            await asyncio.sleep(max(0.0, tick - time.monotonic()))

    async def one(customer: str, due: float):
        await client.post("/recommend", json={"customer_id": customer, "k": 10})
        latencies.append(time.monotonic() - due)  # from the scheduled send: stalls are not hidden

    async def recommend():
        due, n, pending = time.monotonic(), 0, set()
        while due < stop:
            pending.add(asyncio.create_task(one(customers[n % len(customers)], due)))
            n += 1
            due += 1 / RECOMMEND_RPS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(*pending)

    await asyncio.gather(events(), recommend())
    return sent


async def until(check, started: float, limit: float = 10.0) -> float | None:
    while time.monotonic() - started < limit:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


async def probes(client, customers: list[str], items: list[str], stop: float, out: dict) -> None:
    n = 0
    while time.monotonic() < stop - 2:
        n += 1
        view = {"event_id": uuid.uuid4().hex, "ts": now(), "channel": "app", "event_type": "product_view",
                "identity_type": "device_id", "identity_value": f"bench-probe-{uuid.uuid4().hex}", "item_id": items[n % len(items)]}
        r = await client.post("/events", json={"events": [view]})
        started, profile = time.monotonic(), r.json()["results"][0]["customer_id"]

        async def session_list():
            return not (await client.post("/recommend", json={"customer_id": profile, "k": 10})).json()["fallback"]
        out["recommend"].append(await until(session_list, started))

        customer = customers[n % len(customers)]
        before = (await client.post("/score/churn", json={"customer_ids": [customer]})).json()["results"][0]
        buy = {"event_id": uuid.uuid4().hex, "ts": now(), "channel": "app", "event_type": "purchase",
               "customer_id": customer, "item_id": items[n % len(items)], "quantity": 1, "revenue": 10}
        await client.post("/events", json={"events": [buy]})
        started = time.monotonic()

        async def rescored():
            got = (await client.post("/score/churn", json={"customer_ids": [customer]})).json()["results"][0]
            return got.get("probability") != before.get("probability")
        if before.get("status") == 200:
            out["churn"].append(await until(rescored, started, 3.0))
        await asyncio.sleep(1 / PROBES_PER_SECOND)


def customers_and_items(ws: Path) -> tuple[list[str], list[str]]:
    """Known customers who bought long ago (a purchase now moves their churn score) and recommendable items."""
    import duckdb

    from propel.config import Workspace
    from propel.training.recommender_model import load_recommender

    rec, _ = load_recommender(Workspace.resolve(ws))
    path = Workspace.resolve(ws).customer_snapshots / "*.parquet"
    rows = duckdb.sql(f"SELECT customer_id FROM read_parquet('{path}') WHERE lifetime_purchases > 0 AND "
                      "days_since_last_purchase > 30 QUALIFY event_timestamp = max(event_timestamp) OVER () "
                      "ORDER BY hash(customer_id) LIMIT 2000").fetchall()
    return [c for (c,) in rows if rec.knows_customer(c)][:500], [i for i in rec.items[:400] if rec.knows_item(i)][:200]


def percentiles(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "none reflected"
    p50, p99 = np.percentile(done, [50, 99])
    return f"p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms ({len(done)}/{len(values)} within the limit)"


async def measure(url: str, customers: list[str], items: list[str]) -> dict:
    import httpx

    stop = time.monotonic() + SECONDS
    out, latencies = {"recommend": [], "churn": []}, []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client, \
            httpx.AsyncClient(base_url=url, timeout=10) as prober:
        sent, _ = await asyncio.gather(load(client, customers, items, stop, latencies),
                                       probes(prober, customers, items, stop, out))
    return {**out, "events_per_second": sent / SECONDS, "recommend_latency": latencies}


def main() -> None:
    if len(sys.argv) > 1:
        source = Path(sys.argv[1]).resolve()
    else:
        from serve import setup  # bench/serve.py: the demo workspace

        source = setup(ROOT / "bench" / "work" / "serve")
    with tempfile.TemporaryDirectory() as tmp:
        ws = scratch(source, Path(tmp))
        customers, items = customers_and_items(ws)
        proc, url = start_server([BIN / "propel", "--workspace", ws, "serve"], Path(tmp) / "server.log", "/readyz", 300)
        try:
            result = asyncio.run(measure(url, customers, items))
        finally:
            stop_server(proc)
    p99 = np.percentile(result["recommend_latency"], 99) * 1000
    print(f"freshness ({SECONDS:.0f} s, {result['events_per_second']:,.0f} events/s, /recommend at {RECOMMEND_RPS} RPS "
          f"p99 {p99:.1f} ms): /recommend {percentiles(result['recommend'])}; /score/churn {percentiles(result['churn'])}")


if __name__ == "__main__":
    main()

"""Freshness of the real-time path (issue 19), with the stream consumer run by `propel serve` (a process beside the
server). Targets: freshness p99 <= 1 s and /recommend p99 <= 10 ms while events arrive at 1,000/s; after
`kill -9` of the consumer and of the whole server under load, every acknowledged event in the log, the online state
and (after flush) the lake, once; the stream state bounded per profile.

Phases, each SECONDS long (default 20), on one server:
  alone     /recommend at 200 RPS (open loop), no events: the floor of this machine for the next phase;
  load      events at ~1,000/s (batches of 100) + /recommend at 200 RPS, both open loop, plus probes a few per
            second: a new device views an item, then /recommend of its profile is polled every 10 ms until it is a
            session list (no fallback); a known customer buys, then /score/churn is polled until its probability
            moves -> seconds from `POST /events` answered to the answer reflecting it, p50/p99. CPU seconds per
            second of each process (server workers, consumer, this client) and of the whole machine (shared!);
  crash     events at ~1,000/s for new customers; the consumer is killed (-9) after 2 s (the server restarts it),
            the whole server (supervisor, workers, consumer) after 4 s; then a restart: every acknowledged event
            must be in the log once, each profile's online events_1h must equal its logged events (the consumer
            caught up, nothing folded twice), and after `propel stream flush` the lake holds each once.
Last, the consumer's state: profiles, bytes per profile, the longest window kept.

It runs on a scratch copy of the workspace (event log, real-time rows, lake and the re-applied Feast registry are
the copy's; raw files linked). `python bench/freshness.py [WORKSPACE] [out.json]` (default: the `make bench-serve`
demo workspace, built when missing); `BENCH=freshness make bench` records the rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from common import BIN, ROOT, kill_server, propel, start_server, stop_server  # bench/common.py

sys.path.insert(0, str(ROOT))
SECONDS = float(os.environ.get("FRESHNESS_SECONDS", 20))
EVENTS_PER_SECOND, BATCH, RECOMMEND_RPS, PROBES_PER_SECOND = 1000, 100, 200, 4


def scratch(source: Path, into: Path) -> Path:
    """A copy of the workspace that serving may write (raw files linked), with the real-time view applied."""
    ws = into / "ws"
    shutil.copytree(source, ws, ignore=shutil.ignore_patterns("raw", "stream", "served_recommendations"))
    if (source / "data" / "raw").exists():
        (ws / "data" / "raw").symlink_to(source / "data" / "raw")
    with (ws / "propel.toml").open("a") as fh:
        fh.write("\n[serve]\nreload_seconds = 0\n")
    propel("--workspace", ws, "features", "apply")
    return ws


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


async def post_events(client, name: str, items: list[str], stop: float, acked: dict[str, str]) -> None:
    """Events at EVENTS_PER_SECOND in batches of BATCH (open loop) for customers `name`-0..4999 until `stop` or the
    server goes away; acknowledged event_id -> profile into `acked`."""
    import httpx

    tick, n = time.monotonic(), 0
    while tick < stop:
        body = [{"event_id": uuid.uuid4().hex, "ts": now(), "channel": "web", "event_type": "product_view",
                 "customer_id": f"{name}-{(n + i) % 5000}", "item_id": items[(n + i) % len(items)]} for i in range(BATCH)]
        n += BATCH
        try:
            r = await client.post("/events", json={"events": body})
        except httpx.TransportError:
            return  # killed
        acked.update((x["event_id"], x["customer_id"]) for x in r.json()["results"] if x["status"] == "accepted")
        tick += BATCH / EVENTS_PER_SECOND
        await asyncio.sleep(max(0.0, tick - time.monotonic()))


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
    from datetime import date

    from propel.config import Workspace
    from propel.features.asof import as_of
    from propel.features.build import load_catalog
    from propel.training.recommender_model import load_recommender

    w = Workspace.resolve(ws)
    rec, _ = load_recommender(w)
    latest = date.fromisoformat(load_catalog(w)["cutoffs"][-1])
    rows = as_of(w, latest, columns=[], where="lifetime_purchases > 0 AND days_since_last_purchase > 30")
    ids = rows["customer_id"].sample(frac=1, random_state=0).head(2000)
    return [c for c in ids if rec.knows_customer(c)][:500], [i for i in rec.items[:400] if rec.knows_item(i)][:200]


def ms(values: list[float | None]) -> dict:
    """p50/p99 in ms of what was reflected, and how many were (within the probe's limit) of how many."""
    done = [v for v in values if v is not None]
    p50, p99 = np.percentile(done, [50, 99]) * 1000 if done else (float("nan"), float("nan"))
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "reflected": len(done), "probes": len(values)}


def role(p: psutil.Process) -> str:
    line = " ".join(p.cmdline())
    return "consumer" if " stream run" in line else "worker" if "_bentoml_impl.worker" in line \
        else "arbiter" if "bentoml serve" in line else "supervisor"


def cpu_of(server: psutil.Process) -> dict[str, float]:
    """CPU seconds so far of the server's processes by role, of this client, and of the whole machine."""
    out: Counter = Counter()
    for p in [server, *server.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[role(p)] += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    me = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = me.ru_utime + me.ru_stime
    busy = psutil.cpu_times()
    out["machine"] = sum(busy) - busy.idle - busy.iowait
    return out


async def phase(url: str, server: psutil.Process, customers: list[str], items: list[str], events: bool) -> dict:
    """One SECONDS phase: /recommend at RECOMMEND_RPS by bench/serve.py's light open-loop client (pre-encoded requests
    on raw connections: httpx would cost this shared machine ~2 ms of CPU per request), with events and probes
    when `events`."""
    import httpx

    from serve import fixed_rate  # bench/serve.py

    stop = time.monotonic() + SECONDS
    out, acked = {"recommend": [], "churn": []}, {}
    before, t0 = cpu_of(server), time.monotonic()
    bodies = [{"customer_id": c, "k": 10} for c in customers]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client, httpx.AsyncClient(base_url=url, timeout=30) as prober:
        rec, *_ = await asyncio.gather(fixed_rate(int(url.rsplit(":", 1)[1]), "/recommend", bodies, RECOMMEND_RPS, SECONDS),
                                       *((post_events(client, "bench-bg", items, stop, acked),
                                          probes(prober, customers, items, stop, out)) if events else ()))
    wall, after = time.monotonic() - t0, cpu_of(server)
    row = {**{k: round(v, 1) if k.endswith("_ms") else v for k, v in rec.items()}, "seconds": SECONDS,
           "cpu_per_s": {k: round((after[k] - before.get(k, 0.0)) / wall, 2) for k in after}, "cores": psutil.cpu_count()}
    if events:
        row.update(events_per_s=round(len(acked) / SECONDS), freshness_recommend=ms(out["recommend"]),
                   freshness_churn=ms(out["churn"]))
    return row


def consumer_of(proc) -> psutil.Process | None:
    return next((p for p in psutil.Process(proc.pid).children(recursive=True) if role(p) == "consumer"), None)


def caught_up(ws) -> bool:
    """The consumer's committed offset is the log's last event."""
    from propel.featurestore.realtime import SQLiteState
    from propel.lake.events_log import open_log

    log, state = open_log(ws), SQLiteState(ws.stream / "realtime.db")
    try:
        last = log.db.execute("SELECT max(offset) FROM events").fetchone()[0]
        return state.offset() == (log.log_id, last)
    finally:
        log.close()
        state.close()


async def crash(ws_root: Path, tmp: Path, items: list[str]) -> dict:
    """Kill -9 the consumer, then the whole server, under load; restart; compare log, online state and lake."""
    import httpx
    import pandas as pd

    from propel.config import Workspace
    from propel.featurestore import realtime
    from propel.featurestore.store import feature_store
    from propel.lake.events_log import open_log
    from propel.lake.flush import flush
    from propel.lake.tables import Lake

    ws = Workspace.resolve(ws_root)
    proc, url = serve(ws_root, tmp / "crash.log")
    acked: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        load = asyncio.create_task(post_events(client, "bench-crash", items, time.monotonic() + 30, acked))
        await asyncio.sleep(2.0)  # a bench: when the kills come is the experiment
        consumer = consumer_of(proc)
        consumer.kill()
        await asyncio.sleep(2.0)
        restarted = consumer_of(proc)
        kill_server(proc)
        await load
    proc, url = serve(ws_root, tmp / "restart.log")
    try:
        deadline = time.monotonic() + 120
        while not caught_up(ws) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_server(proc)
    log = open_log(ws)
    try:
        logged = [e for _, e in log.read(limit=10**9) if str(e.get("customer_id")).startswith("bench-crash")]
    finally:
        log.close()
    ids = [e["event_id"] for e in logged]
    per_profile = Counter(e["profile_id"] for e in logged)
    got, _ = realtime.reader(feature_store(ws)).read(list(per_profile))
    online = pd.Series(got["events_1h"].to_numpy(), index=got["customer_id"])
    while flush(ws).load_id is not None:
        pass
    in_lake = [r[0] for r in Lake(ws).connect().execute("SELECT event_id FROM events_all WHERE event_id IN "
                                                         "(SELECT unnest(?))", [list(acked)]).fetchall()]
    return {"stage": "realtime crash (kill -9 consumer, then server)", "acknowledged": len(acked),
            "consumer_restarted": restarted is not None and restarted.pid != consumer.pid,
            "lost": len(set(acked) - set(ids)), "logged_twice": len(ids) - len(set(ids)),
            "online_profiles": len(per_profile),
            "online_wrong": int(sum(online.get(p, 0) != n for p, n in per_profile.items())),
            "lake_lost": len(set(acked) - set(in_lake)), "lake_twice": len(in_lake) - len(set(in_lake))}


def state_size(ws_root: Path) -> dict:
    """The consumer's state after the phases: profiles, bytes per profile, the longest window and item lists kept."""
    with sqlite3.connect(ws_root / "data" / "stream" / "realtime.db") as db:
        bodies = [b for (b,) in db.execute("SELECT body FROM state")]
    states = [json.loads(b) for b in bodies]
    sizes = np.array([len(b) for b in bodies])
    return {"stage": "realtime stream state", "profiles": len(states), "bytes_per_profile": round(float(sizes.mean())),
            "max_bytes": int(sizes.max()), "max_window": max(len(s["window"]) for s in states),
            "max_items": max(max(len(s["views"]), len(s["bought"])) for s in states)}


def serve(ws_root: Path, log: Path):
    return start_server([BIN / "propel", "--workspace", ws_root, "serve"], log, "/readyz", 300)


def main() -> None:
    args = sys.argv[1:]
    out = Path(args.pop()) if args and args[-1].endswith(".json") else None
    if args:
        source = Path(args[0]).resolve()
    else:
        from serve import setup  # bench/serve.py: the demo workspace

        source = setup(ROOT / "bench" / "work" / "serve")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ws = scratch(source, tmp)
        customers, items = customers_and_items(ws)
        proc, url = serve(ws, tmp / "server.log")
        try:
            server = psutil.Process(proc.pid)
            asyncio.run(phase(url, server, customers, items, False))  # warm-up (first requests, page cache)
            rows.append({"stage": "freshness /recommend alone", **asyncio.run(phase(url, server, customers, items, False))})
            rows.append({"stage": "freshness under load", **asyncio.run(phase(url, server, customers, items, True))})
        finally:
            stop_server(proc)
        rows.append(asyncio.run(crash(ws, tmp, items)))
        rows.append(state_size(ws))
    for row in rows:
        print(f"[bench-freshness] {json.dumps(row)}")
    if out:
        out.write_text(json.dumps(rows, indent=2))


def stages(base: Path, run) -> list[dict]:
    """For bench/run.py: the whole bench as one process, its rows read back."""
    base.mkdir(parents=True, exist_ok=True)
    run("freshness (real time under load)", [sys.executable, __file__, base / "freshness_bench.json"])
    return json.loads((base / "freshness_bench.json").read_text())


if __name__ == "__main__":
    main()

"""POST /events intake: events/s sustained over HTTP into the embedded log, zero lost, and after a `kill -9`.

`python bench/intake.py [out.json]` starts `propel serve` (default settings: SQLite log, `serve.workers`
workers) on a fresh workspace, then for batches of 100 and of 1,000 events runs CLIENTS concurrent clients
posting as fast as answers come for SECONDS; every accepted event_id must then be in the log exactly once.
Last, it kills the server (`kill -9`, the whole process group) while clients post, restarts it, and checks
every event acknowledged before the kill is in the log. Rows: events/s, request p50/p99, lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from common import BIN, kill_server, start_server, stop_server  # bench/common.py

from propel.config import Workspace
from propel.lake.events_log import open_log
from propel.lake.flush import flush
from propel.lake.tables import Lake

CLIENTS = int(os.environ.get("BENCH_INTAKE_CLIENTS", 32))
SECONDS = float(os.environ.get("BENCH_INTAKE_SECONDS", 8))
_ids = itertools.count()


def batch(n: int) -> list[dict]:
    """Realistic mixed events: an email identity every 4th, a free-text extra, a bad one every 50th."""
    out = []
    for _ in range(n):
        i = next(_ids)
        e = {"event_id": f"e{i}", "ts": "2025-05-01T10:00:00Z", "channel": "web", "event_type": "purchase",
             "item_id": f"I{i % 500}", "quantity": 1, "revenue": "12.50", "session_id": f"S{i // 10}",
             "note": "gift wrap"}
        if i % 4:
            e["customer_id"] = f"C{i % 9000}"
        else:
            e.update(identity_type="email", identity_value=f"user{i}@example.com")
        if i % 50 == 0:
            e["ts"] = "not a time"
        out.append(e)
    return out


async def post_for(url: str, size: int, seconds: float, acked: set[str], stop: asyncio.Event | None = None) -> list[float]:
    """CLIENTS clients posting batches of `size` until `seconds` pass (or `stop`); acknowledged ids into `acked`."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient):
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            body = {"events": batch(size)}
            t0 = time.perf_counter()
            try:
                r = await http.post("/events", json=body)
            except httpx.TransportError:
                return  # the server was killed
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"[bench-intake] POST /events answered {r.status_code}: {r.text[:300]}")
            acked.update(x["event_id"] for x in r.json()["results"] if x["status"] == "accepted")

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=CLIENTS)) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return latencies


def logged(ws: Workspace) -> list[str]:
    log = open_log(ws)
    try:
        return [e["event_id"] for _, e in log.read(limit=10**9)]
    finally:
        log.close()


def serve(ws: Workspace, log: Path):
    return start_server([BIN / "propel", "--workspace", ws.root, "serve"], log, "/healthz", 300)


async def crash(ws: Workspace, tmp: Path) -> dict:
    """Kill -9 the server after a second of load; every event acknowledged before it must be in the log."""
    proc, url = serve(ws, tmp / "crash.log")
    acked: set[str] = set()
    load = asyncio.create_task(post_for(url, 100, 30, acked))
    await asyncio.sleep(1.0)  # load for a second, then the crash (a bench: the timing is the experiment)
    kill_server(proc)
    await load
    proc, url = serve(ws, tmp / "restart.log")
    stop_server(proc)
    ids = logged(ws)
    while flush(ws).load_id is not None:  # and into the lake, each once
        pass
    lake = Lake(ws).connect().execute("SELECT event_id FROM events_all").fetchall()
    in_lake = {r[0] for r in lake}
    return {"stage": "intake crash (kill -9 under load)", "acknowledged": len(acked),
            "lost": len(acked - set(ids)), "logged_twice": len(ids) - len(set(ids)),
            "lake_lost": len(acked - in_lake), "lake_twice": len(lake) - len(in_lake)}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ws = Workspace.resolve(tmp / "ws")
        ws.root.mkdir()
        proc, url = serve(ws, tmp / "server.log")
        try:
            httpx.post(url + "/events", json={"events": batch(10)}, timeout=60).raise_for_status()  # warm
            before = set(logged(ws))
            for size in (100, 1000):
                acked: set[str] = set()
                t0 = time.perf_counter()
                latencies = asyncio.run(post_for(url, size, SECONDS, acked))
                seconds = time.perf_counter() - t0
                ms = np.array(latencies) * 1000
                ids = logged(ws)
                rows.append({"stage": f"intake http batch {size}", "clients": CLIENTS, "events": len(latencies) * size,
                             "events_per_s": round(len(latencies) * size / seconds),
                             "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
                             "acknowledged": len(acked), "lost": len(acked - set(ids)),
                             "logged_twice": len(ids) - len(set(ids)), "unacknowledged_logged": len(set(ids) - acked - before)})
                before = set(ids)
        finally:
            stop_server(proc)
        rows.append(asyncio.run(crash(ws, tmp)))
    for row in rows:
        print(f"[bench-intake] {row}")
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(rows, indent=2))


def stages(base: Path, run) -> list[dict]:
    """For bench/run.py: the whole bench as one process, its rows read back."""
    base.mkdir(parents=True, exist_ok=True)
    run("intake (POST /events)", [sys.executable, __file__, base / "intake_bench.json"])
    return json.loads((base / "intake_bench.json").read_text())


if __name__ == "__main__":
    main()

"""`make bench-serve` (and scale `serve` of `make bench`): the HTTP service under load on loopback.

Targets (issue 6): /recommend p99 <= 10 ms at 200 RPS and >= 1,000 RPS at concurrency 32 with zero
errors; /score/churn for one customer p99 <= 10 ms including the online feature read.

  setup  a demo-size workspace (20k customers x 365 days, the `ingest-1m` raw data when present) with
         features in the SQLite online store and a champion for churn, propensity, uplift and the
         recommender (cached in bench/work/serve);
  load   `propel serve` on a free loopback port, then per endpoint: wrk (closed loop, a bounded run of
         SECONDS, stops by itself) at concurrency 1, 8 and 32 -> RPS, p50/p95/p99, errors, the server's
         CPU per request; an open-loop client at a fixed rate (200 RPS for /recommend, 50 for
         /score/churn; latency counted from the scheduled send time, so stalls are not hidden); the
         in-process cost of the same call (the floor); and the same load against a bare uvicorn echo
         app (the control: what this machine's scheduling alone costs at the tail).

`python bench/serve.py [setup|load|control] [BASE]`; no argument = setup and load, results in bench/results/serve-<time>.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common import BIN, ROOT, demo_workspace, free_port, machine, start_server, stop_server, wait_for_port  # bench/common.py

sys.path.insert(0, str(ROOT))
SECONDS = float(os.environ.get("SERVE_BENCH_SECONDS", 10))  # per wrk run
CONCURRENCY = (1, 8, 32)
FIXED = {"/recommend": 200, "/score/churn": 50}  # open-loop rates (requests per second), FIXED_SECONDS each
FIXED_SECONDS = 15
WORKERS = os.environ.get("SERVE_BENCH_WORKERS")  # default: the workspace's serve.workers


def setup(base: Path) -> Path:
    return demo_workspace(base / "ws", [("features", step) for step in ("build", "apply", "materialize")]
                          + [("train", "all")])


# ---- what is asked -------------------------------------------------------------------------------

def samples(ws: Path) -> dict:
    """Known customers and items, and the contact context the contact models need."""
    from propel.config import Workspace
    from propel.serving.runtime import Runtime

    rt = Runtime(Workspace.resolve(ws))
    rt.refresh()
    missing = {t: s.error for t, s in rt.tasks.items() if s.model is None}
    if missing:
        raise SystemExit(f"[bench-serve] models missing in {ws}: {missing}")
    import duckdb

    path = Workspace.resolve(ws).customer_snapshots / "*.parquet"
    customers = [r[0] for r in duckdb.sql(f"SELECT DISTINCT customer_id FROM read_parquet('{path}') "
                                          "USING SAMPLE 200 ROWS (reservoir, 7)").fetchall()]
    rec = rt.tasks["recommender"].model
    items = [i for i in rec.items[:400] if rec.knows_item(i)][:200]
    champ = rt.tasks["propensity"].model.champion
    context = {c: champ.levels[c][0] for c in champ.context_fields}
    return {"runtime": rt, "customers": customers, "items": items, "context": context}


def bodies(s: dict) -> dict[str, list[dict]]:
    c, ctx = s["customers"], s["context"]
    return {"/recommend": [{"customer_id": i, "k": 10} for i in c],
            "/similar_items": [{"item_id": i, "k": 10} for i in s["items"]],
            "/score/churn": [{"customer_ids": [i]} for i in c],
            "/score/propensity": [{"customer_ids": [i], **ctx} for i in c],
            "/score/uplift": [{"customer_ids": [i], **ctx} for i in c],
            "/score/churn (100 ids)": [{"customer_ids": c[j:j + 100]} for j in range(0, 100)]}


def in_process(s: dict) -> dict[str, dict]:
    """The same calls without HTTP: the floor under each endpoint's latency."""
    rt, c, ctx = s["runtime"], s["customers"], s["context"]
    rec = rt.tasks["recommender"].model
    calls = {"/recommend": lambda j: rec.recommend(c[j % len(c)], 10),
             "/similar_items": lambda j: rec.similar_items(s["items"][j % len(s["items"])], 10),
             "/score/churn": lambda j: rt.tasks["churn"].model.score([c[j % len(c)]], {}, 3),
             "/score/propensity": lambda j: rt.tasks["propensity"].model.score([c[j % len(c)]], ctx, 3),
             "/score/uplift": lambda j: rt.tasks["uplift"].model.score([c[j % len(c)]], ctx, 3),
             "/score/churn (100 ids)": lambda j: rt.tasks["churn"].model.score(c[j % 100:j % 100 + 100], {}, 3)}
    out = {}
    for name, call in calls.items():
        times = []
        for j in range(300):
            started = time.perf_counter()
            call(j)
            times.append(time.perf_counter() - started)
        ms = np.array(times[20:]) * 1000
        out[name] = {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}
    return out


# ---- the server ----------------------------------------------------------------------------------


def start(ws: Path, log: Path) -> tuple[subprocess.Popen, int]:
    args = ["--workers", WORKERS] if WORKERS else []
    try:
        proc, url = start_server([BIN / "propel", "--workspace", ws, "serve", *args], log, "/readyz", 300)
    except RuntimeError as exc:
        raise SystemExit(f"[bench-serve] {exc}") from None
    return proc, int(url.rsplit(":", 1)[1])


def server_cpu_seconds(root_pid: int) -> float:
    """User + system CPU of the server: the arbiter and every process below it (the workers)."""
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in cpu:
        p = pid
        while p not in (0, 1, root_pid) and p in parent:
            p = parent[p]
        if p == root_pid:
            total += cpu[pid]
    return total


async def echo_app(scope, receive, send):
    """The control: a bare ASGI app (uvicorn, no framework) answering the same kind of request."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"ok": true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {%s}
local n = 0
request = function()
  n = n %% #bodies + 1
  return wrk.format(nil, "%s", nil, bodies[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"seconds\\": %%.3f, \\"p50_ms\\": %%.3f, \\"p95_ms\\": %%.3f, " ..
    "\\"p99_ms\\": %%.3f, \\"max_ms\\": %%.3f, \\"non_2xx\\": %%d, \\"socket_errors\\": %%d}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk(port: int, path: str, payloads: list[dict], concurrency: int, tmp: Path) -> dict:
    lua = tmp / "bench.lua"
    quoted = ", ".join(json.dumps(json.dumps(p)) for p in payloads)
    lua.write_text(WRK_SCRIPT % (quoted, path))
    out = subprocess.run(["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{SECONDS:g}s",
                          "--timeout", "5s", "-s", str(lua), f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    result["rps"] = round(result["requests"] / result["seconds"])
    return result


async def fixed_rate(port: int, path: str, payloads: list[dict], rps: int, seconds: float) -> dict:
    """Open loop: request i is due at start + i / rps on one of a few keep-alive connections; latency is
    measured from when it was due, so a stalled server shows as latency (no coordinated omission)."""
    n = int(rps * seconds)
    raw = [(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in (json.dumps(p).encode() for p in payloads)]
    queue: asyncio.Queue = asyncio.Queue()
    latencies, errors = [], 0

    async def connection():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            item = await queue.get()
            if item is None:
                writer.close()
                return
            due, body = item
            writer.write(body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            errors += not head.startswith(b"HTTP/1.1 2")

    workers = [asyncio.create_task(connection()) for _ in range(16)]
    start = time.perf_counter() + 0.2
    for i in range(n):
        due = start + i / rps
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        queue.put_nowait((due, raw[i % len(raw)]))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    ms = np.array(latencies) * 1000
    return {"requests": n, "rps": rps, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "non_2xx": errors}


def load(base: Path) -> list[dict]:
    if shutil.which("wrk") is None:
        raise SystemExit("[bench-serve] wrk not found: apt-get install wrk")
    ws = setup(base)
    s = samples(ws)
    floor = in_process(s)
    payloads = bodies(s)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(ws, base / "server.log")
        try:
            for name, body in payloads.items():  # warm up every path once
                subprocess.run(["curl", "-s", "-o", "/dev/null", "-XPOST", "-H", "Content-Type: application/json",
                                "-d", json.dumps(body[0]), f"http://127.0.0.1:{port}{name.split(' ')[0]}"], check=True)
            for name, body in payloads.items():
                path = name.split(" ")[0]
                for c in CONCURRENCY:
                    cpu = server_cpu_seconds(proc.pid)
                    r = wrk(port, path, body, c, Path(tmp))
                    r["server_cpu_ms_per_request"] = round((server_cpu_seconds(proc.pid) - cpu) * 1000 / max(r["requests"], 1), 3)
                    rows.append({"stage": f"serve {name} c={c}", "endpoint": name, "concurrency": c, **r,
                                 "in_process_p50_ms": floor[name]["p50_ms"], "in_process_p99_ms": floor[name]["p99_ms"]})
                    print(json.dumps(rows[-1]), flush=True)
            for name, rate in FIXED.items():
                cpu = server_cpu_seconds(proc.pid)
                r = asyncio.run(fixed_rate(port, name, payloads[name], rate, FIXED_SECONDS))
                r["server_cpu_ms_per_request"] = round((server_cpu_seconds(proc.pid) - cpu) * 1000 / r["requests"], 3)
                rows.append({"stage": f"serve {name} at {rate} RPS", "endpoint": name, "concurrency": "open loop",
                             **r, "in_process_p50_ms": floor[name]["p50_ms"], "in_process_p99_ms": floor[name]["p99_ms"]})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_server(proc, timeout=60)
        rows += control(Path(tmp))
    workers = WORKERS or json.loads(subprocess.run([sys.executable, "-c", "from propel.config import Workspace; "
                                                    f"print(Workspace.resolve('{ws}').settings().serve.workers)"],
                                                   capture_output=True, text=True, check=True).stdout)
    for row in rows:
        row["workers"] = int(workers)
    return rows


def control(tmp: Path) -> list[dict]:
    """The machine's own noise: the same load against `echo_app` (bare uvicorn, one process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve:echo_app", "--app-dir", str(ROOT / "bench"),
                             "--port", str(port), "--log-level", "warning", "--no-access-log"], start_new_session=True)
    try:
        wait_for_port(port)
        rows = []
        for c in CONCURRENCY:
            r = wrk(port, "/echo", [{"x": 1}], c, tmp)
            rows.append({"stage": f"control (bare uvicorn echo) c={c}", "endpoint": "control", "concurrency": c, **r})
        for rate in sorted(set(FIXED.values())):
            r = asyncio.run(fixed_rate(port, "/echo", [{"x": 1}], rate, FIXED_SECONDS))
            rows.append({"stage": f"control (bare uvicorn echo) at {rate} RPS", "endpoint": "control",
                         "concurrency": "open loop", **r})
        for row in rows:
            print(json.dumps(row), flush=True)
        return rows
    finally:
        stop_server(proc)


def stages(base: Path, run) -> list[dict]:
    """For bench/run.py: setup as its own process, then the load test (its rows read back)."""
    rows = [run("serve setup (demo workspace, 4 champions)", [sys.executable, __file__, "setup", base])]
    run("serve load test", [sys.executable, __file__, "load", base])
    return rows + json.loads((base / "serve_bench.json").read_text())


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    base = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "bench" / "work" / "serve"
    base.mkdir(parents=True, exist_ok=True)
    if what in ("setup", "all"):
        setup(base)
    if what == "control":
        with tempfile.TemporaryDirectory() as tmp:
            control(Path(tmp))
    if what in ("load", "all"):
        rows = load(base)
        (base / "serve_bench.json").write_text(json.dumps(rows, indent=2))
        if what == "all":
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            out = ROOT / "bench" / "results" / f"serve-{stamp.replace(':', '')}.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps({"when": stamp, "machine": machine(), "rows": rows}, indent=2))
            print(f"[bench-serve] wrote {out}")


if __name__ == "__main__":
    main()

"""Helpers the benchmark scripts (and the serving tests) share: running `propel`, the demo-size workspace,
loopback ports, starting and stopping a server."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def propel(*args) -> None:
    subprocess.run([str(BIN / "propel"), *map(str, args)], check=True)


def demo_workspace(ws: Path, steps: list[tuple]) -> Path:
    """20k customers x 365 days ingested into `ws`, then the `propel` steps given (built once, reused).

    Reuses the raw files of the `ingest-1m` scale when they exist (same size and seed)."""
    if (ws / ".ready").exists():
        return ws
    raw = ROOT / "bench" / "work" / "ingest-1m" / "raw"
    if not (raw / "_truth").exists():
        raw = ws.parent / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        propel("generate", "--customers", 20_000, "--days", 365, "--format", "parquet", raw)
    shutil.rmtree(ws, ignore_errors=True)
    propel("--workspace", ws, "ingest", raw)
    for step in steps:
        propel("--workspace", ws, *step)
    (ws / ".ready").touch()
    return ws


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, tries: int = 200) -> None:
    """Until something accepts connections on the loopback port (bounded: tries x 50 ms)."""
    for _ in range(tries):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"[bench] nothing listens on 127.0.0.1:{port} after {tries * 0.05:.0f} s")


def start_server(command: list, log: Path, probe: str, timeout: float, env: dict | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """`command --port <free port>` in its own session (output in `log`); returns (process, base URL) once
    `probe` answers 200, polled within `timeout` seconds (no blind sleep). RuntimeError with the end of the
    log if the server exits or never answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([*map(str, command), "--port", str(port)], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not answer {probe} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the server's session (arbiter and workers), SIGKILL if it has not stopped within `timeout`."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_server(proc: subprocess.Popen) -> None:
    """`kill -9` of the server: its arbiter and every worker. Workers run in sessions of their own, so a
    signal to the arbiter's process group misses them (they would keep serving, orphaned)."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def machine() -> dict:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "cpu": cpu,
            "virtualised": " hypervisor" in cpuinfo, "python": platform.python_version()}

"""Helpers the benchmark scripts share: running `propel`, the demo-size workspace, loopback ports."""

from __future__ import annotations

import shutil
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

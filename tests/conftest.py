"""Shared fixtures: every test works in its own temporary workspace, never the developer's data/."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from propel.config import Workspace

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)  # reference "now" for hand-made data


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "ws")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


def write(raw_dir: Path, name: str, text: str) -> Path:
    """Write a raw CSV from a dedented literal (first line = header)."""
    path = raw_dir / name
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    """A small generated data set (CSV), shared read-only by the tests that need realistic data."""
    from features.generate import generate

    out = tmp_path_factory.mktemp("gen") / "raw"
    generate(out, customers=1500, days=90, seed=11, fmt="csv")
    return out


def lake_frame(ws: Workspace, sql: str) -> pd.DataFrame:
    from features.lake import Lake

    return Lake(ws).connect().execute(sql).df()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, stopped after the session."""
    import os
    import shutil
    import socket
    import subprocess

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):  # wait until it answers (bounded), not a blind sleep
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with code {proc.returncode}")
            import time
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not answer within 10 s")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


FAST_TRAIN = """
[train]
min_positives = 8
min_negatives = 8
churn_horizon_days = 21
churn_lookback_days = 60
max_rounds = 150
early_stopping = 20

[recommend]
seq_seconds = 15
bpr_iterations = 30
"""


@pytest.fixture(scope="session")
def built_features(tmp_path_factory, generated) -> Workspace:
    """`generated` ingested and built (6 weekly snapshots), nothing applied: tests copy it before they apply or
    materialize (read-only)."""
    from features.build import build
    from features.ingest import ingest

    ws = Workspace.resolve(tmp_path_factory.mktemp("built") / "ws")
    ingest(generated, ws)
    build(ws, every_days=7, snapshots=6)
    return ws


@pytest.fixture(scope="session")
def champions(tmp_path_factory, generated) -> Workspace:
    """A read-only workspace with features built, applied, materialized (SQLite) and a champion per task.

    Shared by the serving, batch-scoring and analytics tests; tests that change the registry make their own.
    """
    from features import store
    from features.build import build
    from features.ingest import ingest
    from training import churn, propensity, recommender, uplift

    ws = Workspace.resolve(tmp_path_factory.mktemp("champions") / "ws")
    ingest(generated, ws)
    ws.config_file.write_text(FAST_TRAIN)
    build(ws, every_days=7, snapshots=12)
    store.apply(ws)
    store.materialize(ws)
    for task in (churn, propensity, uplift, recommender):
        assert task.train(ws, truth_dir=generated / "_truth").promoted
    return ws

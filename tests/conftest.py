"""Shared fixtures: every test works in its own temporary workspace, never the developer's data/.

The expensive session workspaces (`generated`, `built_features`, `champions`) are shared read-only; a test
that writes takes a copy with the `copy_of` factory. Tests that use them are marked `slow` automatically,
so `make test-fast` (`-m "not slow"`) runs only what needs no trained models or built features."""

from __future__ import annotations

from pathlib import Path

import pytest

from propel.demo.oracle import Oracle
from propel.config import Workspace
from tests.helpers import FAST_TRAIN, copy_workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "ws")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    """A small generated data set (CSV), shared read-only by the tests that need realistic data."""
    from propel.demo.generate import generate

    out = tmp_path_factory.mktemp("gen") / "raw"
    generate(out, customers=1500, days=90, seed=11, fmt="csv")
    return out


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


@pytest.fixture
def empty_redis(redis_url):
    """The session's redis-server emptied first, for a test that reads a whole stream other tests also wrote."""
    import redis

    host, port = redis_url.split(":")
    redis.Redis(host=host, port=int(port)).flushdb()
    return redis_url


@pytest.fixture(scope="session")
def built_features(tmp_path_factory, generated) -> Workspace:
    """`generated` ingested and built (6 weekly snapshots), nothing applied: tests copy it before they apply or
    materialize (read-only)."""
    from propel.features.build import build
    from propel.lake.ingest import ingest

    ws = Workspace.resolve(tmp_path_factory.mktemp("built") / "ws")
    ingest(generated, ws)
    build(ws, every_days=7, snapshots=6)
    return ws


@pytest.fixture(scope="session")
def champions(tmp_path_factory, generated) -> Workspace:
    """A read-only workspace with features built, applied, materialized (SQLite) and a champion per task.

    Shared by the serving, batch-scoring and analytics tests; tests that change the registry make their own.
    """
    from propel.featurestore import store
    from propel.features.build import build
    from propel.lake.ingest import ingest
    from propel.training import churn, propensity, recommender, uplift

    ws = Workspace.resolve(tmp_path_factory.mktemp("champions") / "ws")
    ingest(generated, ws)
    ws.config_file.write_text(FAST_TRAIN)
    build(ws, every_days=7, snapshots=12)
    store.apply(ws)
    store.materialize(ws)
    for task in (churn, propensity, uplift, recommender):
        assert task.train(ws, oracle=Oracle(generated / "_truth")).promoted
    return ws


SLOW_FIXTURES = {"generated", "built_features", "champions", "redis_url"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def copy_of(tmp_path: Path):
    """Factory: `copy_of(champions)` is a private copy of a shared workspace (the only way tests write to one)."""
    made = iter(range(1_000))

    def copy(source: Workspace, name: str | None = None) -> Workspace:
        return copy_workspace(source, tmp_path / (name or f"copy{next(made)}") / "ws")
    return copy

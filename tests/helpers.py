"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from bench.common import kill_server, start_server, stop_server as stop  # noqa: F401 - the tests' server stop

from propel.config import Workspace

BIN = Path(sys.executable).parent
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)  # reference "now" for hand-made data


def write(raw_dir: Path, name: str, text: str) -> Path:
    """Write a raw CSV from a dedented literal (first line = header)."""
    path = raw_dir / name
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


def lake_frame(ws: Workspace, sql: str) -> pd.DataFrame:
    from propel.lake.tables import Lake

    return Lake(ws).connect().execute(sql).df()


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



def copy_workspace(source: Workspace, dest: Path) -> Workspace:
    """A private copy of a shared workspace, for a test that writes into it. MLflow records absolute
    artefact paths, so the copy's registry is pointed at its own copies of the packages (otherwise it would
    load, and `propel forget` would rewrite, the source's)."""
    ws = Workspace.resolve(shutil.copytree(source.root, dest))
    if ws.mlflow_db.exists():
        with sqlite3.connect(ws.mlflow_db) as db:
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location"),
                                  ("experiments", "artifact_location"), ("model_versions", "storage_location")):
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(source.root), str(ws.root)))
    return ws


def start(command: list, log: Path, env: dict | None = None, probe: str = "/healthz") -> tuple[subprocess.Popen, str]:
    """`command --port <free port>` (`propel serve`, `bentoml serve`, `feast ui`...); returns once `probe` answers."""
    try:
        return start_server(command, log, probe, 180, env)
    except RuntimeError as exc:
        pytest.fail(str(exc))

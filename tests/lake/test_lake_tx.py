"""The transactional lake, with real processes: concurrent ingests load once, a `kill -9` at any point
of an ingest or a forget leaves the previous version readable and a re-run completes it, old lakes
convert once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from propel.config import Workspace
from propel.lake.ingest import ingest
from propel.lake.schema import TABLES
from propel.lake.tables import COMMITS, LOCK, Lake
from tests.helpers import BIN, NOW

EVENTS_HEADER = "event_id,ts,customer_id,channel,event_type,item_id,quantity,revenue"


def _raw(folder: Path, part: int, customers: int = 40, events: int = 1000) -> Path:
    """A small deterministic load: CRM records and events (one bad row in ten is quarantined)."""
    folder.mkdir(parents=True)
    rows = [f"C{i:03d},2025-01-{1 + i % 28:02d},{'yes' if i % 2 else 'no'},{part}" for i in range(customers)]
    (folder / f"customers_{part}.csv").write_text("customer_id,signup_at,marketing_consent,tier\n" + "\n".join(rows) + "\n")
    rows = [f"p{part}e{i},2025-03-{1 + i % 28:02d}T10:{i % 60:02d}:00Z,C{i % customers:03d},"
            f"{'pigeon' if i % 10 == 0 else 'web'},purchase,I{i % 7},1,{i % 50}" for i in range(events)]
    (folder / f"events_{part}.csv").write_text(EVENTS_HEADER + "\n" + "\n".join(rows) + "\n")
    return folder


def _cli(ws: Workspace, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "propel"), "--workspace", str(ws.root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _snapshot(ws: Workspace) -> dict:
    """Everything a reader sees, in a comparable form (timings and merge times left out)."""
    lake = Lake(ws)
    con = lake.connect()
    out = {t: con.execute(f"SELECT * FROM {t}_all ORDER BY ALL").fetchall() for t in TABLES}
    out["identity_map"] = con.execute("SELECT * FROM identity_map ORDER BY ALL").fetchall()
    if lake.files("quarantine"):
        files = ", ".join(f"'{p}'" for p in lake.files("quarantine"))
        out["quarantine"] = con.execute(f"SELECT * FROM read_parquet([{files}]) ORDER BY ALL").fetchall()
    out["manifests"] = [{k: m[k] for k in ("load_id", "files", "tables", "identity")} for m in lake.manifests()]
    return out


def _assert_consistent(ws: Workspace) -> None:
    """Every manifest reconciles, events are not doubled, and the lake holds no file that neither its version
    nor the one before (kept readable until the next write) lists: nothing of an interrupted load."""
    lake = Lake(ws)
    for manifest in lake.manifests():
        for name, c in manifest["tables"].items():
            assert c["input"] == c["accepted"] + c["quarantined"] + c["duplicates"] + c["forgotten"], name
    con = lake.connect()
    total, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM events_all").fetchone()
    assert total == distinct == sum(m["tables"].get("events", {}).get("accepted", 0) for m in lake.manifests())
    commits = [json.loads(p.read_text()) for p in sorted((ws.lake / COMMITS).glob("*.json"))[-2:]]
    listed = {ws.lake / p for c in commits for files in c["files"].values() for p in files}
    on_disk = {p for p in ws.lake.rglob("*") if p.is_file() and p.parts[len(ws.lake.parts)] not in (COMMITS, LOCK)}
    assert on_disk <= listed, f"unlisted files left behind: {sorted(on_disk - listed)}"
    assert {ws.lake / p for files in commits[-1]["files"].values() for p in files} <= on_disk


@pytest.fixture(scope="module")
def loads(tmp_path_factory) -> dict:
    """Two raw loads and a clean reference workspace after each, with a fixed salt."""
    base = tmp_path_factory.mktemp("loads")
    raw = [_raw(base / "raw1", 1), _raw(base / "raw2", 2)]
    snapshots = []
    ws = Workspace.resolve(base / "clean")
    ws.data.mkdir(parents=True)
    (ws.data / ".salt").write_text("fixed-test-salt")
    for folder in raw:
        ingest(folder, ws, now=NOW)
        snapshots.append(_snapshot(ws))
    return {"raw": raw, "snapshots": snapshots, "salt": ws.data / ".salt"}


def _workspace(tmp_path: Path, loads: dict) -> Workspace:
    ws = Workspace.resolve(tmp_path / "ws")
    ws.data.mkdir(parents=True)
    shutil.copy(loads["salt"], ws.data / ".salt")
    return ws


@pytest.mark.parametrize("point", ["after:customers", "after:events", "after:identity", "before_commit", "after_commit"])
def test_kill_during_ingest_keeps_previous_version_and_rerun_completes(tmp_path, loads, point):
    ws = _workspace(tmp_path, loads)
    ingest(loads["raw"][0], ws, now=NOW)
    proc = _cli(ws, "ingest", str(loads["raw"][1]), "--now", "2025-06-01", env={"PROPEL_CRASH_AT": point})
    proc.communicate(timeout=120)
    assert proc.returncode == -9, f"the process was not killed at {point}"
    expected = loads["snapshots"][1] if point == "after_commit" else loads["snapshots"][0]
    assert _snapshot(ws) == expected, "after a kill, readers see exactly the last committed version"
    ingest(loads["raw"][1], ws, now=NOW)  # the re-run
    assert _snapshot(ws) == loads["snapshots"][1], "the re-run gives the lake of a clean load"
    _assert_consistent(ws)


def test_concurrent_ingests_load_once(tmp_path, loads):
    ws = _workspace(tmp_path, loads)
    procs = [_cli(ws, "ingest", str(loads["raw"][0]), "--now", "2025-06-01") for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "another ingest is running" in err and "Traceback" not in err
    assert len(Lake(ws).manifests()) == 1
    assert _snapshot(ws) == loads["snapshots"][0]
    _assert_consistent(ws)


def test_a_held_lock_refuses_a_second_writer_clearly(tmp_path, loads):
    ws = _workspace(tmp_path, loads)
    lake = Lake(ws)
    with lake.transaction("ingest"):
        proc = _cli(ws, "ingest", str(loads["raw"][0]))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"another ingest is running (ingest, pid {os.getpid()}, since" in err and "wait for it to finish" in err
    assert Lake(ws).version == 0 and not Lake(ws).files("events")


def test_failed_load_writes_nothing(tmp_path, loads):
    """A file whose body cannot be read (header fine) stops the load: nothing of it is written."""
    ws = _workspace(tmp_path, loads)
    raw = tmp_path / "raw"
    shutil.copytree(loads["raw"][0], raw)
    import duckdb

    duckdb.sql(f"COPY (SELECT 'I' || range AS item_id, 'shoes' AS category FROM range(50000)) TO '{raw}/items.parquet'")
    data = bytearray((raw / "items.parquet").read_bytes())
    data[200:2000] = b"\xff" * 1800  # corrupt the column data, keep the footer
    (raw / "items.parquet").write_bytes(bytes(data))
    proc = _cli(ws, "ingest", str(raw))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "items.parquet: cannot read as items" in " ".join(err.split()) and "nothing of this load was written" in err
    assert Lake(ws).version == 0
    assert not [p for p in ws.lake.rglob("*.parquet")], "no file of the refused load may remain"


def test_kill_during_forget_keeps_previous_version_and_rerun_completes(tmp_path, loads):
    ws = _workspace(tmp_path, loads)
    ingest(loads["raw"][0], ws, now=NOW)
    before = _snapshot(ws)
    proc = _cli(ws, "forget", "C001", env={"PROPEL_CRASH_AT": "before_commit"})
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert _snapshot(ws) == before
    from propel.forget import forget

    assert forget(ws, ["C001"]).customers == ["C001"]  # the re-run
    con = Lake(ws).connect()
    assert con.execute("SELECT count(*) FROM events_all WHERE source_customer_id = 'C001'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM customers_all WHERE customer_id = 'C001'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM events_all").fetchone()[0] > 0
    # The files that held the person are gone from disk, not only from the version.
    listed = {p for t in Lake(ws).state["files"] for p in Lake(ws).files(t) if p.suffix == ".parquet"}
    assert {p for p in ws.lake.rglob("*.parquet") if p.name != "tombstones.parquet"} == listed


def test_delete_rows_is_one_commit(tmp_path, loads):
    ws = _workspace(tmp_path, loads)
    ingest(loads["raw"][0], ws, now=NOW)
    lake = Lake(ws)
    version = lake.version
    removed = lake.delete_rows(lake.connect(), {"events": "source_customer_id = 'C002'", "customers": "customer_id = 'C002'"})
    assert removed == {"events": 25, "customers": 1}
    assert lake.version == version + 1 and Lake(ws).version == version + 1
    assert set(lake.state["table_versions"]) >= {"events", "customers"}
    assert lake.state["table_versions"]["events"] == version + 1 > lake.state["table_versions"]["identity_map"]


def test_a_lake_written_before_transactions_converts_once(tmp_path, loads, caplog):
    ws = _workspace(tmp_path, loads)
    ingest(loads["raw"][0], ws, now=NOW)
    expected = _snapshot(ws)
    # The old layout: no commit log, the identity map at the lake's root, and a torn file of a load that
    # never wrote its manifest.
    lake = Lake(ws)
    shutil.move(lake.files("identity_map")[0], ws.lake / "identity_map.parquet")
    shutil.rmtree(ws.lake / COMMITS)
    (ws.lake / "customers" / "L000002.parquet").write_bytes(b"")
    proc = _cli(ws, "ingest", str(loads["raw"][1]), env={"PROPEL_CRASH_AT": "before_commit"})
    proc.communicate(timeout=120)
    assert proc.returncode == -9 and not (ws.lake / COMMITS).exists(), "killed while converting: still the old lake"
    caplog.clear()
    assert _snapshot(ws) == expected
    assert "converted once to the transactional layout (version 1; 1 file(s) of an interrupted load" in caplog.text
    assert Lake(ws).version == 1 and not (ws.lake / "customers" / "L000002.parquet").exists()
    caplog.clear()
    Lake(ws)
    assert "converted" not in caplog.text, "the conversion happens once"
    ingest(loads["raw"][1], ws, now=NOW)
    assert json.loads(sorted((ws.lake / COMMITS).glob("*.json"))[-1].read_text())["version"] == 2

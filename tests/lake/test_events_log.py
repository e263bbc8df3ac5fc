"""The event log: order, one entry per event_id, each event's person (a new device, then its login), forgetting a
person, durability across `kill -9` of a writer, two writers at once (SQLite), and the same contract on a real
redis-server (Redis Streams)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from propel.config import Workspace
from propel.lake import events_log
from propel.lake.identity import _mint

WRITER = """
import sys
from propel.config import Workspace
from propel.lake.events_log import open_log
log = open_log(Workspace.resolve(sys.argv[1]))
for n in range(10**6):
    batch = [{"event_id": f"{sys.argv[2]}-{n}-{i}", "ts": "2025-01-01T00:00:00"} for i in range(10)]
    log.append(batch)
    print(n, flush=True)  # acknowledged
"""


def _ws(tmp_path, backend="sqlite", url="") -> Workspace:
    ws = Workspace.resolve(tmp_path / "ws")
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config_file.write_text(f'[stream]\nbackend = "{backend}"\n' + (f'redis_url = "{url}"\n' if url else ""))
    return ws


def _contract(log) -> None:
    assert list(log.append([{"event_id": "a", "n": 1}, {"event_id": "b", "n": 2}])) == ["a", "b"]
    assert list(log.append([{"event_id": "b", "n": 9}, {"event_id": "c", "n": 3}])) == ["c"]  # b is logged once
    rows = log.read()
    assert [(e["event_id"], e["n"]) for _, e in rows] == [("a", 1), ("b", 2), ("c", 3)]
    assert [e["event_id"] for _, e in log.read(after=rows[0][0])] == ["b", "c"]
    assert log.append([]) == {}


def _device(n: int, value: str = "d1", **kw) -> dict:
    return {"event_id": f"i{n}", "identity_type": "device_id", "identity_value": value, **kw}


def _identities(log) -> None:
    """A new device is an anonymous profile (the id a batch load would mint for it); its login moves it, and
    that profile, to the customer; a device the identity map gives to a known customer stays theirs."""
    anon = _mint("device_id:d1")
    assert log.append([_device(1), _device(2)]) == {"i1": anon, "i2": anon}
    assert log.append([_device(3, customer_id="C7"), _device(4)]) == {"i3": "C7", "i4": "C7"}
    assert log.append([_device(5, "d2", customer_id="C8")], [("K1", None)]) == {"i5": "C8"}, "the login names C8"
    assert log.append([_device(6, "d2")], [("K1", None)]) == {"i6": "K1"}, "a known customer's device is not moved"
    assert log.append([{"event_id": "i7", "customer_id": "C2"}], [(None, "C3")]) == {"i7": "C3"}, "C2 merged into C3"
    body = {e["event_id"]: e for _, e in log.read() if e["event_id"].startswith("i")}
    assert body["i3"]["merged_from"] == [anon] and "merged_from" not in body["i4"]
    assert body["i1"]["profile_id"] == anon and body["i4"]["profile_id"] == "C7"


def _forgets(ws) -> None:
    log = events_log.open_log(ws)
    log.append([{"event_id": "f1", "customer_id": "C1"}, {"event_id": "f2", "identity_type": "device_id",
                "identity_value": "d9"}, {"event_id": "f3", "customer_id": "C2"}])
    assert events_log.forget(ws, {"C1"}, {("device_id", "d9")}) == 2
    assert [e["event_id"] for _, e in log.read() if e["event_id"].startswith("f")] == ["f3"]


def test_sqlite_log_contract(tmp_path):
    _contract(events_log.open_log(_ws(tmp_path)))
    _identities(events_log.open_log(_ws(tmp_path)))
    _forgets(_ws(tmp_path))
    assert events_log.forget(_ws(tmp_path / "none"), {"C1"}, set()) == 0  # no log: nothing to do, none created
    assert not (tmp_path / "none" / "ws" / "data" / "stream").exists()


def test_redis_log_contract(tmp_path, empty_redis):
    _contract(events_log.open_log(_ws(tmp_path, "redis", empty_redis)))
    _identities(events_log.open_log(_ws(tmp_path, "redis", empty_redis)))
    _forgets(_ws(tmp_path, "redis", empty_redis))


def test_acknowledged_appends_survive_kill_9_and_two_writers_lose_nothing(tmp_path):
    ws = _ws(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(ws.root), name], stdout=subprocess.PIPE, text=True)
             for name in ("w1", "w2")]
    acked = {}
    deadline = time.monotonic() + 60
    for name, proc in zip(("w1", "w2"), procs):
        while time.monotonic() < deadline:  # each writer acknowledges a few batches, then dies mid-append
            n = int(proc.stdout.readline())
            if n >= 20:
                break
        acked[name] = n
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read().split()
        acked_more = [int(x) for x in rest]
        if acked_more:
            acked[[k for k, p in zip(("w1", "w2"), procs) if p is proc][0]] = max(acked_more)
    logged = [e["event_id"] for _, e in events_log.open_log(ws).read(limit=10**7)]
    assert len(logged) == len(set(logged))
    for name, n in acked.items():
        assert n >= 20
        assert {f"{name}-{k}-{i}" for k in range(n + 1) for i in range(10)} <= set(logged)
    with pytest.raises(KeyError):  # an event without an id is a caller bug, never logged silently
        events_log.open_log(ws).append([{"ts": "x"}])

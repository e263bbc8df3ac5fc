"""POST /events on a real `propel serve` (loopback, one worker) over a fresh workspace: per-event answers by the
ingest rules, idempotent re-send, PII hashed before the log, a new device's anonymous profile and its login, the
API key, malformed bodies a 400, a killed intake process replaced, and (last) every acknowledged event in the log after
a `kill -9` of the server, whose intake processes then exit on their own."""

from __future__ import annotations

import json
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from propel.config import Workspace
from propel.lake import events_log
from propel.lake.identity import _mint
from propel.lake.schema import CHANNELS, EVENT_TYPES
from tests.helpers import BIN, start, stop

pytestmark = pytest.mark.slow  # a real server
KEY = "events-key"
EMAIL = "Ana.Example@Mail.test"
GOOD = [
    {"event_id": "e1", "ts": "2025-05-30T10:00:00Z", "customer_id": "C1", "channel": "web", "event_type": "product_view",
     "item_id": "I1", "session_id": "s1"},
    {"event_id": "e2", "ts": "20250530", "identity_type": "email", "identity_value": EMAIL, "channel": "app",
     "event_type": "purchase", "item_id": "I2", "quantity": 1, "revenue": "$1,200.50"},
    {"event_id": "e3", "ts": "2025-05-30T11:00:00+02:00", "identity_type": "device_id", "identity_value": "dev-9",
     "channel": "app", "event_type": "add_to_cart", "item_id": "I1", "revenue": ""},
]
BAD = [
    ({"event_id": "b1", "ts": "yesterday", "customer_id": "C1", "channel": "web", "event_type": "purchase"}, "bad_timestamp:ts"),
    ({"event_id": "b2", "ts": "2025-05-30", "customer_id": "C1", "channel": "telepathy", "event_type": "purchase"},
     "not_allowed:channel"),
    ({"event_id": "b3", "ts": "2025-05-30", "customer_id": "C1", "channel": "web", "event_type": "purchase", "revenue": -5},
     "negative_value:revenue"),
    ({"event_id": "b4", "ts": "2025-05-30", "channel": "web", "event_type": "purchase"}, "missing_identity"),
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace.resolve(tmp_path_factory.mktemp("events") / "ws")
    ws.root.mkdir()
    ws.config_file.write_text(f'[serve]\napi_key = "{KEY}"\nworkers = 1\nreload_seconds = 0\n')
    return ws


@pytest.fixture(scope="module")
def server(ws, tmp_path_factory):
    proc, url = start([BIN / "propel", "--workspace", ws.root, "serve", "--workers", "1"],
                      tmp_path_factory.mktemp("log") / "server.log")
    yield proc, url
    if proc.poll() is None:  # the last test kills it
        stop(proc)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[1], timeout=30, headers={"X-API-Key": KEY}) as client:
        yield client


def test_each_event_is_answered_by_the_ingest_rules(http, ws):
    body = {"events": [GOOD[0], BAD[0][0], GOOD[1], *(e for e, _ in BAD[1:]), GOOD[2]]}
    r = http.post("/events", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    statuses = {x["event_id"]: x for x in answer["results"]}
    assert [x["index"] for x in answer["results"]] == list(range(len(body["events"])))
    assert (answer["accepted"], answer["rejected"], answer["duplicates"]) == (3, 4, 0)
    for event, reason in BAD:
        assert statuses[event["event_id"]]["status"] == "rejected"
        assert statuses[event["event_id"]]["reason"] == reason
    assert all(statuses[e["event_id"]]["status"] == "accepted" for e in GOOD)
    logged = [e for _, e in events_log.open_log(ws).read(limit=100)]
    assert sorted(e["event_id"] for e in logged) == ["e1", "e2", "e3"]
    text = json.dumps(logged)
    assert EMAIL not in text and EMAIL.lower() not in text  # hashed at the door


def test_a_resent_event_is_a_duplicate_and_logged_once(http, ws):
    r = http.post("/events", json={"events": [GOOD[0], GOOD[0]]})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["duplicate", "duplicate"]
    assert [e["event_id"] for _, e in events_log.open_log(ws).read(limit=100)].count("e1") == 1


def test_a_new_device_is_an_anonymous_profile_that_its_login_merges(http, ws):
    view = {"ts": "2025-05-30T12:00:00Z", "identity_type": "device_id", "identity_value": "new-dev", "channel": "app",
            "event_type": "product_view", "item_id": "I3"}
    [first] = http.post("/events", json={"events": [{**view, "event_id": "n1"}]}).json()["results"]
    assert first["status"] == "accepted" and first["customer_id"] == _mint("device_id:new-dev")
    r = http.post("/events", json={"events": [{**view, "event_id": "n2", "event_type": "login", "customer_id": "C42"},
                                              {**view, "event_id": "n3"}]}).json()["results"]
    assert [x["customer_id"] for x in r] == ["C42", "C42"], "after the login the device is the customer's"
    logged = {e["event_id"]: e for _, e in events_log.open_log(ws).read(limit=100)}
    assert logged["n2"]["merged_from"] == [first["customer_id"]], "the anonymous profile is merged into C42"


def test_concurrent_batches_taken_together_are_answered_each_on_its_own(http, ws):
    """Requests arriving at once are validated and logged as one batch; each answer still indexes its own events,
    rejects only its own bad events, and an event_id sent by two of them is accepted once."""
    from concurrent.futures import ThreadPoolExecutor

    def send(n: int):
        batch = [{**GOOD[0], "event_id": f"g{n}-{i}"} for i in range(20)]
        batch[1] = {**GOOD[0], "event_id": f"g{n}-bad", "ts": "yesterday"}
        batch[2] = {**GOOD[0], "event_id": "g-shared"}
        return http.post("/events", json={"events": batch}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    for answer in answers:
        assert [x["index"] for x in answer["results"]] == list(range(20))
        assert answer["results"][1] == {"index": 1, "event_id": answer["results"][1]["event_id"], "status": "rejected",
                                        "field": "ts", "reason": "bad_timestamp:ts"}
    assert sum(a["results"][2]["status"] == "accepted" for a in answers) == 1, "the shared id once"
    assert sum(a["accepted"] for a in answers) == 8 * 18 + 1
    logged = [e["event_id"] for _, e in events_log.open_log(ws).read(limit=10_000)]
    assert len([i for i in logged if i.startswith("g")]) == 8 * 18 + 1 and len(logged) == len(set(logged))


@pytest.mark.parametrize("body", [{}, {"events": []}, {"events": "e1"}, {"events": [1, 2]}, {"events": [GOOD[0]], "x": 1},
                                  {"events": [GOOD[0]] * 1001}])
def test_a_malformed_body_is_a_400(http, body):
    r = http.post("/events", json=body)
    assert r.status_code == 400, r.text


def test_events_need_the_api_key(server):
    r = httpx.post(f"{server[1]}/events", json={"events": [GOOD[0]]}, timeout=30)
    assert r.status_code == 401


def _events_metrics(url: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text  # open without the API key, like Prometheus scrapes it
    return {(s.labels["channel"], s.labels["event_type"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "propel_events"
            for s in family.samples if s.name == "propel_events_total"}


def test_answered_events_are_counted_on_metrics_by_channel_type_and_status(http, server):
    """Unknown or missing channels and event types are counted as "other": clients cannot add series."""
    before = _events_metrics(server[1])
    batch = [{**GOOD[0], "event_id": "m1"}, {**GOOD[0], "event_id": "m2", "channel": "APP "}, {**GOOD[0], "event_id": "m1"},
             {**GOOD[0], "event_id": "m3", "channel": "telepathy", "event_type": "x" * 500}, {"event_id": "m4"}]
    assert http.post("/events", json={"events": batch}).json()["accepted"] == 2
    after = _events_metrics(server[1])
    grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert grew == {("web", "product_view", "accepted"): 1, ("app", "product_view", "accepted"): 1,
                    ("web", "product_view", "duplicate"): 1, ("other", "other", "rejected"): 2}, grew
    assert {c for c, _, _ in after} <= {*CHANNELS, "other"} and {t for _, t, _ in after} <= {*EVENT_TYPES, "other"}


def _intake_processes(proc) -> list[psutil.Process]:
    """The serving workers' intake processes (propel/serving/event_intake.py): multiprocessing's spawned children."""
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _until(check, what: str, bound: float = 120):
    deadline = time.monotonic() + bound
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} within {bound} s"
        time.sleep(0.2)
    return found


def test_a_killed_intake_process_is_replaced(http, server, ws):
    """Batches are taken in a process beside the worker: killed, its batch is a 503 at worst (nothing
    acknowledged) and the next one is taken by a new process."""
    first = _until(lambda: _intake_processes(server[0]), "intake process")
    for p in first:
        p.kill()
    psutil.wait_procs(first, timeout=30)
    codes = []
    for attempt in range(3):  # the batch the dead process had, if any, is refused; a resend is taken
        r = http.post("/events", json={"events": [{**GOOD[0], "event_id": "after-intake-kill"}]})
        codes.append(r.status_code)
        if r.status_code == 200:
            break
    assert set(codes) <= {200, 503} and codes[-1] == 200, codes
    assert r.json()["accepted"] + r.json()["duplicates"] == 1
    logged = [e["event_id"] for _, e in events_log.open_log(ws).read(limit=10_000)]
    assert logged.count("after-intake-kill") == 1
    second = _intake_processes(server[0])
    assert second and {p.pid for p in second}.isdisjoint({p.pid for p in first})



def test_acknowledged_events_survive_kill_9_of_the_server(server, ws):
    proc, url = server
    with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": KEY}) as client:
        batch = [{**GOOD[0], "event_id": f"k{i}"} for i in range(500)]
        assert client.post("/events", json={"events": batch}).json()["accepted"] == 500
    intake_processes = _intake_processes(proc)
    # server and workers, right after the answer: what it acknowledged is durable; the workers' intake processes
    # are left to notice their worker gone and exit (no orphan holds the log)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        if p not in intake_processes:
            p.kill()
    proc.wait()
    assert intake_processes and not psutil.wait_procs(intake_processes, timeout=30)[1], "orphaned intake processes"
    psutil.wait_procs(tree, timeout=30)
    logged = {e["event_id"] for _, e in events_log.open_log(ws).read(limit=10_000)}
    assert {f"k{i}" for i in range(500)} <= logged

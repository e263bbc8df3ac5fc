"""The Propel HTTP service (BentoML): recommendations and scores from the registry's champions, features
from the Feast online store. `propel serve` / `make serve` start it; `bentoml build` packages it.

  POST /recommend, /similar_items            the `recommender` champion (popular fallback for unknown customers)
                                             (/recommend answers are logged for analytics: propel/serving/served_log.py)
  POST /score/churn, /score/propensity, /score/uplift   a batch of customer ids -> probability (uplift),
                                             decile, reason codes, model version; 404 per unknown id
  POST /events                               customer events (the data contract's `events` columns), validated as
                                             ingest does, in the event log (propel/lake/events_log.py) before the
                                             answer, each with its person (customer_id: a new device gets an
                                             anonymous profile); `propel stream flush` moves them into the lake,
                                             and the stream consumer (a process `propel serve` runs beside the
                                             workers, unless [stream] consume = false) folds them into real-time
                                             features (propel/featurestore/realtime.py):
                                             /recommend folds in a profile's recent items, the scores compute
                                             "days since" from its newest events
  POST /reload                               load champions promoted since start (also automatic, see below)
  GET  /healthz, /readyz, /metadata, /metrics, /report, /docs.json (OpenAPI)

The workspace is PROPEL_HOME; settings are its `[serve]` section (propel/config.py `ServeSettings`).

Why it is fast (the issue's targets are p99 <= 10 ms; see docs/benchmarks.md "Serving"):
- handlers are `async` and run on the event loop: the work is ~1 ms of NumPy/LightGBM, cheaper than a
  hop to BentoML's thread pool; only large scoring batches go to a thread so they do not block the loop;
- features are read from the online store's tables directly (`propel.featurestore.online_read`), not through
  Feast's per-call registry rebuild, and the models encode rows straight to NumPy and predict single-
  threaded (`propel.training.model.encode`, `predict_options`) instead of pandas + an OpenMP team per call;
- responses are plain JSON, not re-validated by pydantic;
- after loading, the heap is frozen (`gc.freeze`), so the collector's full passes scan only per-request
  objects, not the ~10^6 objects of the loaded libraries and models (100+ ms pauses otherwise). BentoML
  keeps a timer per request for `timeout_seconds`, which is why that timeout is short by default.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hmac
import importlib.util
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio.to_thread
import bentoml
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from propel.config import Workspace
from propel.serving.event_intake import GroupCommit, IntakeProcess
from propel.serving.runtime import Runtime
from propel.serving.schemas import EventsResponse, RecommendResponse, ScoreResponse, SimilarItemsResponse, openapi, schemas
from propel.serving.scoring import BadContext, CustomerScorer, check_context
from propel.training.tasks import RECOMMENDER
from propel.serving.served_log import ServedLog

# No tracing exporter is configured, so BentoML's OpenTelemetry middleware would only build and drop ~5
# spans per request (~0.15 of ~1 ms of server CPU per /recommend here). Set OTEL_SDK_DISABLED=false to
# trace with BentoML's `tracing` settings.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
log = logging.getLogger("propel.serving")
WS = Workspace.resolve()  # PROPEL_HOME, else the current folder
SETTINGS = WS.settings().serve
S = schemas(SETTINGS, WS.settings().stream.max_events)
INLINE_IDS = 32  # scoring batches up to this size run on the event loop; larger ones in a worker thread (BatchQueue)
QUEUE_SHARE = 0.75  # the queued scoring work of a worker is kept under this share of serve.timeout_seconds
DRAIN_FACTOR = 32  # a body past the limit is read (and dropped) up to this many times the limit, then cut off
OPEN_PATHS = {"/healthz", "/livez", "/readyz", "/metrics"}  # answered without the API key
# A worker's threads (large scoring batches, reloads) hold the interpreter lock in stretches; with this switch
# interval instead of Python's 5 ms the event loop, where /recommend runs, gets the lock back sooner (its lag p99
# was 3.3-5.7 ms against 4.5-7.7 ms while a thread took 10 event batches of 100 a second)
SWITCH_SECONDS = 0.001
ARRIVED: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")  # when Gate saw the request (monotonic)

FALLBACKS = Counter("propel_fallback", "Answers served by a fallback, per endpoint and reason", ["endpoint", "reason"])
MISSES = Counter("propel_unknown_ids", "Requested customer or item ids the models or the online store do not know",
                 ["endpoint"])
UNAVAILABLE = Counter("propel_unavailable", "Requests answered 503 because the task's model is not loaded", ["endpoint"])

_live: dict[str, "Propel"] = {}  # this process's service instance, for the routes outside BentoML's APIs


def _json(body: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": message}
    if field:
        body["detail"] = [{"loc": field.split("."), "msg": message}]
    return _json(body, status)


class Gate:
    """ASGI middleware in front of every route: the optional API key; request bodies checked before BentoML
    parses them (JSON only, else 415; at most serve.max_body_bytes, else 413, refused from Content-Length
    or while reading, never parsed); /readyz with per-task detail (BentoML's own only says yes or no); and
    /docs.json, the OpenAPI spec as this server answers it (serving.schemas.openapi)."""

    def __init__(self, app, api_key: str, max_body: int):
        self.app, self.key, self.max_body = app, api_key.encode(), max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            ARRIVED.set(time.monotonic())
            path, headers, method = scope["path"], dict(scope["headers"]), scope["method"]
            if path == "/readyz" and method in ("GET", "HEAD") and "propel" in _live:
                state = _live["propel"].runtime.readiness()
                return await _json(state, 200 if state["ready"] else 503)(scope, receive, send)
            if self.key and path not in OPEN_PATHS:
                if not hmac.compare_digest(headers.get(b"x-api-key", b""), self.key):
                    return await _error(401, "missing or wrong X-API-Key header")(scope, receive, send)
            if path == "/docs.json" and method in ("GET", "HEAD") and "propel" in _live:
                return await _json(_live["propel"].openapi())(scope, receive, send)
            if method == "POST":
                refused = self._refuse(headers)
                body = None if refused else await self._body(receive)
                if refused or body is None:
                    return await (refused or self._too_large())(scope, receive, send)
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refuse(self, headers: dict) -> JSONResponse | None:
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media != b"application/json":
            return _error(415, "send the request body as JSON (Content-Type: application/json)", "content-type")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return _error(400, "Content-Length is not a number", "content-length")
        return self._too_large() if int(length) > self.max_body else None

    def _too_large(self) -> JSONResponse:
        return _error(413, f"the request body is larger than serve.max_body_bytes ({self.max_body:,} bytes)", "body")

    async def _body(self, receive) -> bytes | None:
        """The whole body, or None past the limit: the rest is then read and dropped (up to DRAIN_FACTOR
        times the limit) so that the client, still sending, gets to read the 413."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            size += len(message.get("body", b""))
            if size <= self.max_body:
                chunks.append(message.get("body", b""))
            if not message.get("more_body") or size > DRAIN_FACTOR * self.max_body:
                return b"".join(chunks) if size <= self.max_body else None


def _replay(body: bytes, receive):
    """An ASGI receive that hands the app the body Gate already read, then the connection's own events."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()
    return replay


class NoRequestValues(logging.Filter):
    """Keeps request values out of the server log: BentoML logs the exception of a rejected request, and a
    pydantic or JSON error quotes the input (customer ids...). The record keeps the exception's type and,
    for anything but a ValueError (what pydantic and JSON errors are), its stack (code lines, no values);
    never its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            stack = "" if isinstance(exc, ValueError) else "\n" + "".join(traceback.format_tb(exc.__traceback__))
            record.msg = f"{record.getMessage()}: {type(exc).__name__} (message not logged: it may quote the request){stack}"
            record.args, record.exc_info, record.exc_text = (), None, None
            if isinstance(exc, ValueError):  # a rejected request (pydantic, JSON): the client's error, not ours
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


for _name in ("bentoml._internal.server.http_app", "uvicorn.error"):  # BentoML's log_exception; uvicorn's ASGI errors
    logging.getLogger(_name).addFilter(NoRequestValues())


class Busy(Exception):
    """A batch that would not finish within the request timeout: answered 429 with Retry-After."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after


class BatchQueue:
    """Large scoring batches of one worker, one at a time (the work holds the GIL: side by side they only
    stretch each other past the timeout, the 504s of issue 17), and only as many as can finish within the
    request timeout: a batch predicted to finish later than `budget` seconds after its request arrived
    (ARRIVED) is refused at once with 429 and Retry-After, and so is one still waiting when its turn could
    no longer come in time. The prediction is the measured seconds per id of earlier batches of the same
    kind (task, with or without reasons); before a kind has been measured, a batch only runs behind nothing."""

    def __init__(self, budget: float):
        self.budget, self.pending, self.busy = budget, 0.0, 0  # seconds of admitted work; batches admitted
        self.per_id: dict[tuple, float] = {}
        self.lock: asyncio.Lock | None = None

    async def run(self, kind: tuple, n: int, fn, *args):
        rate = self.per_id.get(kind)
        cost = rate * n if rate is not None else 0.0
        now = time.monotonic()
        left = ARRIVED.get(now) + self.budget - now  # of this request's budget
        if self.busy and (rate is None or self.pending + cost > left):
            raise Busy(max(1, math.ceil(self.pending)))
        self.lock = self.lock or asyncio.Lock()
        self.busy, self.pending = self.busy + 1, self.pending + cost
        try:
            if self.lock.locked():
                try:
                    await asyncio.wait_for(self.lock.acquire(), max(0.001, left - cost))
                except TimeoutError:
                    raise Busy(max(1, math.ceil(self.pending - cost))) from None
            else:
                await self.lock.acquire()
            try:
                started = time.perf_counter()
                result = await anyio.to_thread.run_sync(fn, *args)
                measured = (time.perf_counter() - started) / n
                self.per_id[kind] = measured if rate is None else 0.7 * rate + 0.3 * measured
            finally:
                self.lock.release()
            return result
        finally:
            self.busy, self.pending = self.busy - 1, self.pending - cost


async def metadata(_request):
    svc = _live["propel"]
    return _json({"service": "propel", "tasks": {t: s.describe() for t, s in svc.runtime.tasks.items()},
                  "limits": {"max_ids": SETTINGS.max_ids, "max_k": SETTINGS.max_k, "reasons": SETTINGS.reasons}})


class Report:
    """GET /report: rendering costs seconds of CPU, so `propel report` runs in a child process (never holding
    this interpreter while requests wait; analytics is a later stage than serving, so it is not imported
    here) and the page is kept in memory for serve.report_seconds; until the first one is ready the answer
    is a 202 with Retry-After."""

    def __init__(self, ws: Workspace, max_age: float):
        self.ws, self.max_age = ws, max_age
        self.html: str | None = None
        self.error: str | None = None
        self.rendered_at = 0.0
        self.pending = None
        self.pool = None

    def get(self) -> JSONResponse | HTMLResponse:
        if importlib.util.find_spec("propel.analytics.report") is None:
            return _error(503, "the analytics report is not available in this installation (no propel.analytics.report module)")
        if self.pending is not None and self.pending.done():
            try:
                self.html, self.error = self.pending.result(), None
            except Exception as exc:  # noqa: BLE001 - e.g. nothing ingested yet: say so
                self.html, self.error = None, f"the report cannot be rendered: {type(exc).__name__}: {exc}"
            self.rendered_at, self.pending = time.monotonic(), None
        if self.pending is None and (self.html is None and self.error is None
                                     or time.monotonic() - self.rendered_at > self.max_age):
            if self.pool is None:
                self.pool = ThreadPoolExecutor(1)
            self.pending = self.pool.submit(self.render)
        if self.html is not None:
            return HTMLResponse(self.html)
        if self.error is not None:
            return _error(503, self.error)
        return JSONResponse({"error": "the report is being rendered; retry in a few seconds"}, 202, {"Retry-After": "5"})

    def render(self) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.html"
            done = subprocess.run([str(Path(sys.executable).parent / "propel"), "--workspace", str(self.ws.root), "report",
                                   "--out", str(out)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError((done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr).strip()
                                   else f"propel report exited {done.returncode}")
            return out.read_text()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


async def report(_request):
    return _live["propel"].report.get()


pages = Starlette(routes=[Route("/metadata", metadata), Route("/report", report)])


@bentoml.service(
    name="propel",
    workers=int(getattr(bentoml.use_arguments(), "workers", 0) or SETTINGS.workers),
    traffic={"timeout": SETTINGS.timeout_seconds},
    logging={"access": {"enabled": SETTINGS.access_log}},
)
@bentoml.asgi_app(pages, path="/")
class Propel:
    def __init__(self) -> None:
        sys.setswitchinterval(SWITCH_SECONDS)
        self.runtime = Runtime(WS)
        self.report = Report(WS, SETTINGS.report_seconds)
        # what /recommend answered, for analytics (written off the request path; never for a forgotten customer)
        self.served = ServedLog(WS, forgotten=self.runtime.tombstones)
        self.queue = BatchQueue(QUEUE_SHARE * SETTINGS.timeout_seconds)
        self._intake_process = IntakeProcess(WS)  # POST /events batches are taken there (propel/serving/event_intake.py)
        self._intake = GroupCommit(self._intake_process.take, 5 * WS.settings().stream.max_events)
        self._lock = threading.Lock()
        self._stamp = self.runtime.stamp()
        self.runtime.refresh()
        self._freeze()
        _live["propel"] = self

    def openapi(self) -> dict:
        """GET /docs.json: BentoML's spec as this server answers it (serving.schemas.openapi), with the campaign
        values and categories of the champions loaded now."""
        if not hasattr(self, "_spec"):
            self._spec = self.bento_service.openapi_spec.asdict()
        levels = {}
        for task in ("propensity", "uplift"):
            scorer = getattr(self.runtime.tasks.get(task), "model", None)
            if isinstance(scorer, CustomerScorer):
                levels[f"/score/{task}"] = {c: scorer.champion.levels.get(c, []) for c in scorer.champion.context_fields}
        rec = getattr(self.runtime.tasks.get(RECOMMENDER), "model", None)
        categories = getattr(rec, "categories", None)
        return openapi(self._spec, api_key=bool(SETTINGS.api_key), open_paths=OPEN_PATHS,
                       max_body=SETTINGS.max_body_bytes, levels=levels,
                       categories=None if categories is None else [str(c) for c in categories])

    @staticmethod
    def _freeze() -> None:
        """Move everything loaded so far out of the collector's way (see the module docstring)."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _refresh(self) -> dict:
        with self._lock:
            self._stamp = self.runtime.stamp()
            changes = self.runtime.refresh()
            if changes:
                self._freeze()
            return changes

    @bentoml.on_startup
    async def _watch_registry(self) -> None:
        """Reload champions when the registry changes (a promotion), checked every reload_seconds."""
        if SETTINGS.reload_seconds > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.report.close()
        self.served.close()
        self._intake_process.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(SETTINGS.reload_seconds)
            try:
                if self.runtime.stamp() != self._stamp:
                    await anyio.to_thread.run_sync(self._refresh)
            except Exception as exc:  # noqa: BLE001 - keep watching; the next change retries
                log.warning("registry check failed: %s: %s", type(exc).__name__, exc)

    def _unavailable(self, task: str, endpoint: str) -> JSONResponse:
        UNAVAILABLE.labels(endpoint).inc()
        loaded = self.runtime.tasks.get(task)
        return _error(503, (loaded.error if loaded else None) or f"the {task} model is not loaded")

    # ---- recommendations -------------------------------------------------------------------------
    @bentoml.api(route="/recommend")
    async def recommend(self, request: S.RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a customer (popular items, flagged, when the customer is unknown or forgotten)."""
        loaded = self.runtime.recommender()
        if loaded is None or loaded.model is None:
            return self._unavailable(RECOMMENDER, "recommend")
        model, f = loaded.model, request.filters
        categories = getattr(model, "categories", None)
        if f.category is not None and categories is not None and f.category not in categories:
            return _error(400, f"filters.category '{f.category}' is not a catalogue category", "filters.category")
        fresh = request.fresh_interactions
        unknown = sum(not model.knows_item(i) for i in fresh)
        if unknown:
            MISSES.labels("recommend").inc(unknown)
        views, bought = self.runtime.recent_items(request.customer_id)  # the stream's, newest first
        exclude = [*f.exclude, *(bought if model.exclude_purchased else ())]
        fresh = [*reversed(views), *reversed(bought), *fresh]
        rec = model.recommend(request.customer_id, request.k, category=f.category, min_price=f.min_price,
                              max_price=f.max_price, exclude=exclude or None, fresh_items=fresh or None)
        if rec.fallback:
            FALLBACKS.labels("recommend", rec.fallback).inc()
        body = {"recommendation_id": uuid.uuid4().hex, "customer_id": request.customer_id,
                "items": [{"item_id": i, "score": s, "explored": e}
                          for i, s, e in zip(rec.items, rec.scores, rec.explored)],
                "model": rec.model, "model_version": loaded.version, "fallback": rec.fallback is not None,
                "fallback_reason": rec.fallback}
        self.served.record(body)
        return _json(body)

    @bentoml.api(route="/similar_items")
    async def similar_items(self, request: S.SimilarItemsRequest, /) -> SimilarItemsResponse:
        """Items most similar to an item (404 naming item_id when the catalogue does not have it)."""
        loaded = self.runtime.tasks.get(RECOMMENDER)
        if loaded is None or loaded.model is None:
            return self._unavailable(RECOMMENDER, "similar_items")
        if not loaded.model.knows_item(request.item_id):
            MISSES.labels("similar_items").inc()
            return _error(404, f"unknown item_id '{request.item_id}': not in the recommender's catalogue", "item_id")
        similar = loaded.model.similar_items(request.item_id, request.k)
        return _json({"item_id": request.item_id, "items": [{"item_id": i, "score": s} for i, s in similar],
                      "model_version": loaded.version})

    # ---- events ----------------------------------------------------------------------------------
    @bentoml.api(route="/events")
    async def events(self, request: S.EventsRequest, /) -> EventsResponse:
        """Customer events: each validated by the ingest rules; the accepted ones are in the event log before
        this answers, so an acknowledged event survives any crash. A resent event_id is a duplicate."""
        try:
            results = await self._intake.submit(request.events)
        except Exception as exc:  # noqa: BLE001 - the log is unreachable: nothing acknowledged, the client resends
            log.warning("events: the event log failed: %s", type(exc).__name__)
            return _error(503, f"the event log is unavailable ({type(exc).__name__}); nothing of this batch was "
                          "acknowledged: send it again")
        counts = {s: sum(r["status"] == s for r in results) for s in ("accepted", "duplicate", "rejected")}
        return _json({"accepted": counts["accepted"], "duplicates": counts["duplicate"], "rejected": counts["rejected"],
                      "results": results})

    # ---- scores ----------------------------------------------------------------------------------
    async def _score(self, task: str, request, context: dict) -> JSONResponse:
        endpoint = f"score/{task}"
        loaded = self.runtime.tasks.get(task)
        if loaded is None or loaded.model is None:
            return self._unavailable(task, endpoint)
        scorer = loaded.model
        try:
            context = check_context(scorer.champion, context)
        except BadContext as exc:
            return _error(400, str(exc), exc.field)
        ids = request.customer_ids
        try:
            if len(ids) <= INLINE_IDS:
                results = scorer.score(ids, context, request.reasons)
            else:
                results = await self.queue.run((task, request.reasons > 0), len(ids), scorer.score, ids, context,
                                               request.reasons)
        except Busy as busy:
            return JSONResponse({"error": f"this worker's scoring queue is full; retry in {busy.retry_after} s"}, 429,
                                {"Retry-After": str(busy.retry_after)})
        except Exception as exc:  # noqa: BLE001 - the online store failed: a 503 with the cause, no ids logged
            log.warning("%s: online read or scoring failed: %s", endpoint, type(exc).__name__)
            return _error(503, f"scoring failed reading the online store: {type(exc).__name__}")
        unknown = sum(r["status"] == 404 for r in results)
        if unknown:
            MISSES.labels(endpoint).inc(unknown)
        return _json({"task": task, "model_version": loaded.version, "unknown": unknown, "results": results})

    @bentoml.api(route="/score/churn")
    async def score_churn(self, request: S.ScoreRequest, /) -> ScoreResponse:
        """Churn probability of each customer."""
        return await self._score("churn", request, {})

    @bentoml.api(route="/score/propensity")
    async def score_propensity(self, request: S.ContactScoreRequest, /) -> ScoreResponse:
        """Probability that each customer buys within the response window if contacted."""
        return await self._score("propensity", request, request.model_dump(include={"campaign_channel", "offer_type"}))

    @bentoml.api(route="/score/uplift")
    async def score_uplift(self, request: S.ContactScoreRequest, /) -> ScoreResponse:
        """How much contacting each customer raises their purchase probability."""
        return await self._score("uplift", request, request.model_dump(include={"campaign_channel", "offer_type"}))

    @bentoml.api(route="/reload")
    async def reload(self) -> dict:
        """Load champions promoted since start in this worker (the others follow within reload_seconds).
        200 with what changed; 202 when loading outlasts the request timeout (it goes on: see /metadata)."""
        loading = asyncio.ensure_future(anyio.to_thread.run_sync(self._refresh))
        done, _ = await asyncio.wait({loading}, timeout=max(0.5, SETTINGS.timeout_seconds - 1))
        tasks = {t: s.describe() for t, s in self.runtime.tasks.items()}
        if not done:
            return _json({"status": "loading", "tasks": tasks}, 202)
        return _json({"status": "done", "changed": loading.result(), "tasks": tasks})


Propel.add_asgi_middleware(Gate, api_key=SETTINGS.api_key, max_body=SETTINGS.max_body_bytes)

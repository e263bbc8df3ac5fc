"""What one serving process holds: the feature store, a scorer per task champion, the recommender,
and why anything is missing. The HTTP layer (`propel.serving.service`) only translates requests to it.

A task without a champion (or whose champion cannot load) is recorded with the reason and its
endpoints answer 503; the others keep working. `refresh()` loads champions promoted since the last
look (unchanged versions are kept), and re-opens the feature store when `features apply` rewrote
its registry, so a promotion reaches a running server without a restart: the service calls it on
POST /reload and whenever `stamp()` (the registries' modification times) changes. `propel forget`
reaches it without either: `recommender()` applies the tombstones whenever their file changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from propel.featurestore import realtime, store as fstore
from propel.config import Workspace
from propel.lake import tombstones
from propel.serving.scoring import CustomerScorer, load_champion
from propel.training.tasks import RECOMMENDER, TASKS
from propel.training import registry

log = logging.getLogger(__name__)
PROBE_ID = "__propel_readiness_probe__"  # read from the online store by /readyz; never a real customer


@dataclass
class Loaded:
    """One task's state in this process: a model (scorer or recommender) or the reason there is none."""

    task: str
    version: str | None = None
    run_id: str | None = None
    feature_service: str | None = None
    model: object | None = None  # CustomerScorer, or propel.training.recommender_model.Recommender
    error: str | None = None
    loaded_at: str | None = None

    def describe(self) -> dict:
        out = {"ready": self.model is not None, "model": self.task, "version": self.version,
               "training_run": self.run_id, "feature_service": self.feature_service, "loaded_at": self.loaded_at}
        return out if self.error is None else {**out, "error": self.error}


@dataclass
class Runtime:
    ws: Workspace
    tasks: dict[str, Loaded] = field(default_factory=dict)
    store: object | None = None
    store_error: str | None = None
    store_stamp: float | None = None
    forgotten: frozenset[str] = frozenset()  # the tombstones, as last read
    forgotten_stamp: tuple | None = None
    realtime: tuple = (None, None)  # (store, its real-time view reader)

    def tombstones(self) -> frozenset[str]:
        """`propel forget`'s tombstones: one stat of their file per call, re-read when it changed."""
        path = self.ws.tombstones
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self.forgotten_stamp:
            try:
                self.forgotten, self.forgotten_stamp = tombstones.keys(path), stamp
            except (OSError, ValueError) as exc:  # unreadable for a moment: the next call reads it again
                log.warning("tombstones not read (%s); retried on the next call", type(exc).__name__)
        return self.forgotten

    def recommender(self) -> Loaded | None:
        """The recommender's state with the tombstones applied to its model, so a person forgotten a moment
        ago gets the popular fallback from the next request on (the package is rewritten without them as
        well, for the next load: propel.forget)."""
        forgotten = self.tombstones()
        loaded = self.tasks.get(RECOMMENDER)
        if loaded is not None and loaded.model is not None and loaded.model.forgotten is not forgotten:
            loaded.model.forget(forgotten)
        return loaded

    def recent_items(self, customer_id: str) -> tuple[list[str], list[str]]:
        """The profile's recent views and purchases from the stream, newest first (none before features apply)."""
        store = self.store
        if store is None:
            return [], []
        if self.realtime[0] is not store:
            self.realtime = (store, realtime.reader(store))
        return realtime.recent(self.realtime[1], customer_id) if self.realtime[1] else ([], [])

    def stamp(self) -> tuple[float, ...]:
        """Modification times of the model registry and the Feast registry (0 when absent)."""
        db = self.ws.mlflow_db
        paths = [db, db.with_name("mlflow.db-wal"), self._feast_registry()]
        return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths)

    def _feast_registry(self):
        return self.ws.feast_registry(self.ws.settings().feast.online)

    def refresh(self) -> dict[str, dict]:
        """(Re)load what changed; returns {task: {"from": version, "to": version}} for each change."""
        started = time.perf_counter()
        new_store = self._open_store()
        client = registry.tracking(self.ws)
        changes = {}
        for task in TASKS:
            current = self.tasks.get(task) or Loaded(task)
            champ = registry.champion_version(client, task)
            version = str(champ.version) if champ else None
            if current.model is not None and version == current.version:
                if new_store and isinstance(current.model, CustomerScorer):
                    current.model = CustomerScorer(self.ws, current.model.champion, self.store)
                continue
            loaded = self._load(task) if version else Loaded(task, error=str(registry.NoChampion(task)))
            if loaded.version != current.version or loaded.error != current.error:
                changes[task] = {"from": current.version, "to": loaded.version}
            self.tasks[task] = loaded
        log.info("serving models refreshed in %.1fs: %s", time.perf_counter() - started,
                 {t: (s.version if s.model is not None else "unavailable") for t, s in self.tasks.items()})
        return changes

    def _open_store(self) -> bool:
        """A new Feast store object when its registry changed (readers are built per store object)."""
        path = self._feast_registry()
        stamp = path.stat().st_mtime if path.exists() else None
        if self.store is not None and stamp == self.store_stamp:
            return False
        self.store_stamp = stamp
        try:
            if stamp is None:
                raise FileNotFoundError(f"no Feast registry at {path}; run `propel features apply`")
            self.store, self.store_error = fstore.feature_store(self.ws), None
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the score endpoints
            self.store, self.store_error = None, f"feature store unavailable: {exc}"
        return True

    def _load(self, task: str) -> Loaded:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            if task == RECOMMENDER:
                from propel.training.recommender_model import load_recommender

                model, version = load_recommender(self.ws)
                run_id = registry.tracking(self.ws).get_model_version(task, version).run_id
                return Loaded(task, version, run_id, getattr(model, "feature_service", None), model, loaded_at=now)
            champion = load_champion(self.ws, task)
            if self.store is None:
                return Loaded(task, champion.version, champion.run_id, champion.feature_service, error=self.store_error)
            scorer = CustomerScorer(self.ws, champion, self.store)
            return Loaded(task, champion.version, champion.run_id, champion.feature_service, scorer, loaded_at=now)
        except Exception as exc:  # noqa: BLE001 - one broken model must not take the others down
            log.warning("cannot load the %s champion: %s: %s", task, type(exc).__name__, exc)
            return Loaded(task, error=f"the {task} champion could not be loaded ({type(exc).__name__}: {exc})")

    def readiness(self) -> dict:
        """Models loaded, and the online store answering a read (one probe per feature service)."""
        store = {"reachable": self.store is not None, "error": self.store_error}
        for loaded in self.tasks.values():
            if isinstance(loaded.model, CustomerScorer) and store["reachable"]:
                try:
                    loaded.model.reader.read([PROBE_ID])
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    store = {"reachable": False, "error": f"online store read failed: {type(exc).__name__}: {exc}"}
        tasks = {t: s.describe() for t, s in self.tasks.items()}
        serving = [t for t, s in tasks.items() if s["ready"] and (t == RECOMMENDER or store["reachable"])]
        return {"ready": bool(serving), "degraded": len(serving) < len(tasks), "online_store": store, "tasks": tasks}

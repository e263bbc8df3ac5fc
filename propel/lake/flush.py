"""`propel stream flush`: events of the event log (POST /events) move into the lake, each exactly once.

A flush is a load like `propel ingest`'s: the logged events (already validated and PII-hashed at the door)
are staged by ingest's own `_Loader` without hashing again, then deduplicated against the lake by
event_id (so an event also ingested from a file is counted once), checked for bot bursts and forgotten
people, written, and identities re-resolved; its manifest records the log's id and the offset range it
took, in the same lake transaction as the rows. The next flush starts after the last recorded offset of
the same log, so a crash before the commit re-reads the same events and a re-run finds nothing new.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone

import pyarrow as pa

from propel.config import Workspace
from propel.lake import identity
from propel.lake.events_log import open_log
from propel.lake.ingest import IngestError, IngestReport, _Loader
from propel.lake.intake import CONTRACT, EVENTS, _text
from propel.lake.tables import Lake, LakeBusy, crash_point
from propel.progress import steps

LIVE_ONLY = ("profile_id", "merged_from")  # the log's live resolution; the lake resolves people itself


def _rows(events: list[dict]) -> dict[str, list]:
    """VARCHAR columns of the logged events: the contract's, then each extra field of `extra`."""
    columns: dict[str, list] = {c: [] for c in CONTRACT}
    for n, event in enumerate(events):
        values = {k: v for k, v in event.items() if k not in LIVE_ONLY and k != "extra"}
        values.update(json.loads(event["extra"]) if event.get("extra") else {})
        for name in values.keys() - columns.keys():
            columns[name] = [None] * n
        for name, column in columns.items():
            column.append(_text(values.get(name)))
    return columns


def _last_offset(lake: Lake, log_id: str):
    """Where the last flush of this log stopped (None: it was never flushed)."""
    done = [m["stream"]["to"] for m in lake.manifests() if m.get("stream", {}).get("log_id") == log_id]
    return done[-1] if done else None


def flush(ws: Workspace, limit: int = 500_000, now: datetime | None = None, progress: bool = False) -> IngestReport:
    """Move up to `limit` logged events not flushed before into the lake, in one transaction."""
    started = time.perf_counter()
    lake, log = Lake(ws), open_log(ws)
    try:
        with lake.transaction("stream flush"):
            after = _last_offset(lake, log.log_id)
            batch = log.read(log.start if after is None else after, limit)
            if not batch:
                return IngestReport(None, [], [], {}, {}, time.perf_counter() - started)
            return _load(lake, ws, log, after, batch, now, progress, started)
    except LakeBusy as exc:
        raise IngestError(str(exc)) from None
    finally:
        log.close()


def _load(lake: Lake, ws: Workspace, log, after, batch: list, now: datetime | None, progress: bool,
          started: float) -> IngestReport:
    settings = ws.settings()
    load_id = f"L{len(lake.manifests()) + 1:06d}"
    loader = _Loader(lake, settings, ws.root, now or datetime.now(timezone.utc))
    rows = _rows([e for _, e in batch])
    with steps(progress, "stream flush", 2) as advance:
        loader.con.register("logged", pa.table({n: pa.array(v, pa.string()) for n, v in rows.items()}))
        present, typed = loader._stage_selects(EVENTS, [loader._select("logged", "stream", EVENTS, hashed=True)])
        loader.con.unregister("logged")
        counts = loader.finish_table(EVENTS, present, load_id, loader._count_coercions(typed))
        advance(f"events: {counts.accepted:,} rows")
        crash_point("flush:after_events")
        id_report = identity.resolve(lake, settings.identity, load_id, con=loader.con)
        advance("identities resolved")
    seconds = time.perf_counter() - started
    report = IngestReport(load_id, [], [], {"events": counts}, id_report, seconds, loader.warnings)
    stream = {"backend": settings.stream.backend, "log_id": log.log_id, "from": after, "to": batch[-1][0],
              "events": len(batch)}
    manifest = {"load_id": load_id, "stream": stream, "started_at": datetime.now(timezone.utc).isoformat(),
                "files": [], "tables": {"events": asdict(counts)}, "identity": id_report,
                "seconds": round(seconds, 3), "warnings": report.warnings}
    path = lake.new_file("manifests", f"{load_id}.json")
    path.write_text(json.dumps(manifest, indent=2, default=str))
    lake.add("manifests", [path])
    crash_point("flush:before_commit")
    return report

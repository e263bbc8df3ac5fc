"""The events POST /events answers, counted on /metrics: `propel_events_total{channel, event_type, status}`.

Per minute is PromQL's job (`increase(propel_events_total[1m])`): a counter survives scrapes missed and sums
over BentoML's worker processes (its multiprocess directory is set before the service module is imported),
where a "last minute" gauge would need a clock thread per worker. Label values are the contract's channels
and event types, anything else "other", so a client cannot grow the number of series.
"""

from __future__ import annotations

import collections

from prometheus_client import Counter

from propel.lake.schema import CHANNELS, EVENT_TYPES

EVENTS = Counter("propel_events", "Events answered by POST /events, per channel, event type and status",
                 ["channel", "event_type", "status"])


def label(value, allowed: tuple[str, ...]) -> str:
    """The contract's value (trimmed, lower case, as intake reads it) or "other"."""
    value = "" if value is None else str(value).strip().lower()
    return value if value in allowed else "other"


def keys(events: list, checked: list[dict], results: list[dict]) -> collections.Counter:
    """One batch's counts per label set: `events` as received, `checked` from `intake.validate`, `results` as
    answered (summed first: one counter update per label set, not per event)."""
    counts = collections.Counter()
    for raw, r, answer in zip(events, checked, results):
        source = r.get("event") or (raw if isinstance(raw, dict) else {})
        counts[label(source.get("channel"), CHANNELS), label(source.get("event_type"), EVENT_TYPES), answer["status"]] += 1
    return counts


def add(counts: collections.Counter) -> None:
    for key, n in counts.items():
        EVENTS.labels(*key).inc(n)

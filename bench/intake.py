"""Events/s of intake validation (`propel.lake.intake.validate`) for batches of 100 and 1,000 events.

Run: `python bench/intake.py` (a fresh tmp workspace; the first call, which connects, is not timed).
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from propel.config import Workspace
from propel.lake.intake import validate

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


def batch(n: int, start: int) -> list[dict]:
    """Realistic mixed events: ids, an email identity every 4th, a free-text extra, a bad one every 50th."""
    out = []
    for i in range(start, start + n):
        e = {"event_id": f"e{i}", "ts": "2025-05-01T10:00:00Z", "channel": "web", "event_type": "purchase",
             "item_id": f"I{i % 500}", "quantity": 1, "revenue": "12.50", "session_id": f"S{i // 10}",
             "note": "gift wrap"}
        if i % 4:
            e["customer_id"] = f"C{i % 9000}"
        else:
            e.update(identity_type="email", identity_value=f"user{i}@example.com")
        if i % 50 == 0:
            e["ts"] = "not a time"
        out.append(e)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.resolve(Path(tmp) / "ws")
        validate(ws, batch(10, 0), now=NOW)
        for size in (100, 1000):
            total, start, t0 = 0, 0, time.perf_counter()
            while time.perf_counter() - t0 < 3.0:
                results = validate(ws, batch(size, start), now=NOW)
                assert len(results) == size
                total += size
                start += size
            rate = total / (time.perf_counter() - t0)
            print(f"intake validate: batch {size:>5}: {rate:,.0f} events/s ({total:,} events)")


if __name__ == "__main__":
    main()

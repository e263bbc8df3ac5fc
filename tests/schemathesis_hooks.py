"""Schemathesis hooks for tests/test_serving.py (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis


@schemathesis.hook("filter_body").apply_to(path="/recommend")
def ordered_price_range(context, body) -> bool:
    """JSON Schema cannot relate two fields: a min_price above max_price is a request the spec allows and
    the server rightly refuses (400 naming filters), so it is not generated as a valid one."""
    filters = body.get("filters") if isinstance(body, dict) else None
    low, high = (filters.get("min_price"), filters.get("max_price")) if isinstance(filters, dict) else (None, None)
    return not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high)

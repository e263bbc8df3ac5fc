"""Features of the moment a request is made (or a message is sent), not of the customer: its calendar.

Feast applies this function as the on-demand view `request_context` (propel/featurestore/repo/feature_views.py)
for training sets and online reads; batch scoring calls it directly for the planned send time, without
importing Feast.
"""

from __future__ import annotations

import pandas as pd


def request_context(inputs: pd.DataFrame) -> pd.DataFrame:
    ts = pd.to_datetime(inputs["request_ts"], utc=True)
    return pd.DataFrame({"request_hour": ts.dt.hour.astype("int64"), "request_dow": ts.dt.dayofweek.astype("int64"),
                         "request_is_weekend": (ts.dt.dayofweek >= 5).astype("int64")})

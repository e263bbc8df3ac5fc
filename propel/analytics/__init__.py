"""Marketing analytics on the lake and feature store: segments, attribution, KPIs, experiments, monitoring, report."""

"""Each training run logs the lake table versions it read, so a model can be traced to the rows it saw."""

from __future__ import annotations

from propel.lake.tables import Lake
from propel.training import registry


def test_training_runs_tag_the_lake_versions_they_read(champions):
    client = registry.tracking(champions)
    run = client.get_run(registry.champion_version(client, "churn").run_id)
    versions = Lake(champions).versions()
    assert versions["lake"] >= 1 and versions["events"] >= 1
    assert {k: int(run.data.tags[f"propel.lake_version.{k}"]) for k in versions} == versions

"""MLflow tracking and the model registry: champion/challenger, promotion, rollback, alias history.

Tracking lives in the workspace (`sqlite:///<ws>/mlruns/mlflow.db`, artifacts under `mlruns/`).
Each task has one experiment and one registered model of the same name; the serving model is the
version with alias `champion`. Every alias change is appended to `mlruns/alias_history.jsonl`
(time, task, from/to version, why, metrics), so "which model was champion on day D" has an answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from propel.config import Workspace

CHAMPION = "champion"



class NoChampion(LookupError):
    """The task has no champion model yet; says how to get one."""

    def __init__(self, task: str):
        super().__init__(f"no champion model for '{task}' yet: train one (`propel train {task}`) or promote a "
                         f"version (`propel models promote {task} VERSION`)")


def tracking(ws: Workspace) -> MlflowClient:
    """Point MLflow at the workspace store and return a client."""
    ws.mlruns.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{ws.mlflow_db}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def experiment(ws: Workspace, task: str) -> str:
    """The task's experiment id (created with artifacts under mlruns/<task>/)."""
    client = tracking(ws)
    found = client.get_experiment_by_name(task)
    if found:
        return found.experiment_id
    return client.create_experiment(task, artifact_location=(ws.mlruns / task).as_uri())


def champion_version(client: MlflowClient, task: str):
    try:
        return client.get_model_version_by_alias(task, CHAMPION)
    except MlflowException:
        return None


@dataclass
class Decision:
    promote: bool
    reason: str


def decide(metric: str, challenger: float, champion: float | None, margin: float, higher_is_better: bool = True) -> Decision:
    """Promote only when the challenger beats the champion on the same test set by `margin`."""
    if champion is None:
        return Decision(True, f"no champion yet; {metric} {challenger:.4f}")
    gain = (challenger - champion) if higher_is_better else (champion - challenger)
    verdict = f"{metric} {challenger:.4f} vs champion {champion:.4f} on the same test set (margin {margin})"
    if gain > margin:
        return Decision(True, "better: " + verdict)
    return Decision(False, "not better: " + verdict)


def _history_path(ws: Workspace):
    return ws.mlruns / "alias_history.jsonl"


def history(ws: Workspace, task: str | None = None) -> list[dict]:
    path = _history_path(ws)
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if task is None or r["task"] == task]


def set_champion(ws: Workspace, task: str, version: int | str, reason: str, metrics: dict | None = None,
                 action: str = "promote") -> dict:
    """Move the `champion` alias and record the change."""
    client = tracking(ws)
    try:
        client.get_model_version(task, str(version))
    except MlflowException:
        raise ValueError(f"model '{task}' has no version {version}; see `propel models list`") from None
    current = champion_version(client, task)
    client.set_registered_model_alias(task, CHAMPION, str(version))
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "task": task, "action": action,
             "from_version": int(current.version) if current else None, "to_version": int(version),
             "reason": reason, "metrics": metrics or {}}
    with _history_path(ws).open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return entry


def rollback(ws: Workspace, task: str) -> dict:
    """Give `champion` back to the version that held it before the current one."""
    client = tracking(ws)
    current = champion_version(client, task)
    if current is None:
        raise ValueError(f"model '{task}' has no champion to roll back")
    previous = [h["from_version"] for h in history(ws, task) if h["to_version"] == int(current.version) and h["from_version"]]
    if not previous:
        raise ValueError(f"{task} v{current.version} has no earlier champion to roll back to")
    return set_champion(ws, task, previous[-1], f"rollback from v{current.version}", action="rollback")


def list_models(ws: Workspace) -> list[dict]:
    client = tracking(ws)
    rows = []
    for model in client.search_registered_models():
        champ = champion_version(client, model.name)
        for v in client.search_model_versions(f"name = '{model.name}'"):
            run = client.get_run(v.run_id) if v.run_id else None
            rows.append({"task": model.name, "version": int(v.version),
                         "champion": bool(champ and str(champ.version) == str(v.version)),
                         "created": datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
                         "metric": run.data.tags.get("propel.selection_metric") if run else None,
                         "value": run.data.metrics.get(run.data.tags.get("propel.selection_metric", ""), None) if run else None,
                         "run_id": v.run_id})
    return sorted(rows, key=lambda r: (r["task"], r["version"]))

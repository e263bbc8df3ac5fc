"""`propel score`: one request validated, dispatched to its task's job (scores, recommendations, item
audiences, next best action; locally or on Spark) and exported. It sits above the modules it dispatches
to, which all build on `propel.serving.batch`."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from propel.config import Workspace
from propel.lake.tables import Lake
from propel.serving import nba, recommendations
from propel.training.tasks import SCORE_TASKS
from propel.serving.batch import (Audience, Campaign, Selection, context, load_champion, output_format, run,
                                  score_job, snapshot)

ALL_TASKS = (*SCORE_TASKS, "recommender", "nba")
ENGINES = ("local", "spark")


@dataclass
class ScoreRequest:
    """Everything `propel score` was asked for (see the command's --help)."""

    task: str
    out: Path | None = None
    as_of: date | None = None
    selection: Selection = field(default_factory=Selection)
    channel: str | None = None
    offer: str | None = None
    campaign: str | None = None  # a lake campaign id: its channel and offer
    campaigns: Path | None = None  # nba: candidate actions file
    send_at: datetime | None = None
    item: str | None = None  # recommender: audience for this item ...
    category: str | None = None  # ... or this category
    k: int | None = None  # recommender: items per customer
    reasons: int | None = None
    contact_cap: int | None = None
    engine: str = "local"  # or "spark": churn, propensity, uplift scores computed on Spark (propel.serving.spark)


def execute(ws: Workspace, req: ScoreRequest, progress: bool = False) -> dict:
    """Validate the request, build the task's job and run it; ValueError with a clear message otherwise."""
    if req.task not in ALL_TASKS:
        raise ValueError(f"unknown task '{req.task}'; choose one of {', '.join(ALL_TASKS)}")
    if req.engine not in ENGINES:
        raise ValueError(f"--engine {req.engine}: choose one of {', '.join(ENGINES)}")
    if req.engine == "spark" and req.task not in SCORE_TASKS:
        raise ValueError(f"--engine spark scores {', '.join(SCORE_TASKS)}; '{req.task}' runs on this machine only")
    cfg = ws.settings().score
    misplaced = {"--persuadables": req.selection.persuadables and req.task != "uplift",
                 "--item/--category": (req.item or req.category) and req.task != "recommender",
                 "--campaigns/--contact-cap": (req.campaigns or req.contact_cap is not None) and req.task != "nba",
                 "--channel/--offer/--campaign": (req.channel or req.offer or req.campaign)
                 and req.task not in ("propensity", "uplift")}
    for option, bad in misplaced.items():
        if bad:
            raise ValueError(f"{option} does not apply to '{req.task}'")
    output_format(ws, req.out)
    send_at = (req.send_at or datetime.now(timezone.utc)).replace(microsecond=0)
    send_at = send_at if send_at.tzinfo else send_at.replace(tzinfo=timezone.utc)
    top_reasons = cfg.reasons if req.reasons is None else req.reasons
    # features as of the planned send, unless asked otherwise: a backtest must not see the future. With a
    # planned send the days since count to it, as the online path counts to its request time; else to the
    # snapshot's cutoff (its values as built)
    snap = snapshot(ws, req.as_of or (send_at.date() if req.send_at else None), send_at if req.send_at else None)
    if req.task == "recommender":
        if not (req.item or req.category):
            return recommendations.recommendations(ws, snap, req.selection, req.out, req.k or cfg.recommendations,
                                                   cfg.chunk_rows, progress)
        job = recommendations.item_audience_job(ws, req.item, req.category)
    elif req.task == "nba":
        champion = load_champion(ws, "uplift")
        actions = nba.load_actions(ws, req.campaigns, send_at)
        cap = cfg.contact_cap if req.contact_cap is None else req.contact_cap
        job = nba.job(champion, actions, send_at, cap, top_reasons, nba.typical_order_value(snap))
    else:
        champion = load_champion(ws, req.task)
        campaign = lake_campaign(ws, req.campaign) if req.campaign else (
            Campaign(req.channel, req.offer) if req.channel or req.offer else None)
        if campaign and not (campaign.channel and campaign.offer_type):
            raise ValueError("--channel and --offer go together (what is sent: both are model inputs)")
        job = score_job(champion, campaign, send_at, top_reasons)
    audience = Audience(ws, snap, req.selection.where, req.selection.honour_consent)
    score_all = None
    if req.engine == "spark":
        from propel.lake.spark import require

        require()  # without pyspark: the install line, not an ImportError from propel.serving.spark
        from propel.serving import spark

        ctx = context(champion, campaign, send_at)
        score_all = functools.partial(spark.write_scores, ws, champion, ctx, audience, ws.settings().spark.master)
        job.settings["engine"] = "spark"
    return run(ws, job, audience, req.selection, req.out, cfg.chunk_rows, progress, score_all)


def lake_campaign(ws: Workspace, campaign_id: str) -> Campaign:
    rows = Lake(ws).connect().execute("SELECT channel, offer_type FROM campaigns WHERE campaign_id = ?",
                                      [campaign_id]).fetchall()
    if not rows:
        raise ValueError(f"--campaign {campaign_id}: no such campaign in the lake's campaigns table")
    return Campaign(rows[0][0], rows[0][1] or "unknown", campaign_id)

"""The `propel` command line: one command per pipeline stage, each ending with a one-line summary."""

from __future__ import annotations

import functools
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from propel.config import Workspace

app = typer.Typer(help="Propel: unified customer data, features, models and decisions for marketing.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """An error the user can fix; printed as one clear message, never as a traceback."""


def ingest_errors() -> tuple[type[Exception], ...]:
    """IngestError and Busy (another lake or feature writer) once loaded (only they raise them): importing them up
    front would add ~1 s (pandas, SciPy) to the start-up of every command."""
    module, lake = sys.modules.get("propel.lake.ingest"), sys.modules.get("propel.lake.tables")
    return ((module.IngestError,) if module else ()) + ((lake.Busy,) if lake else ())


def friendly(fn):
    """Turn known user-facing errors into a message and exit code 2."""
    import duckdb

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, ValueError, FileNotFoundError, *ingest_errors()) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
        except duckdb.OutOfMemoryException as exc:
            ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
            limit = (ctx.obj if ctx and ctx.obj else Workspace.resolve()).settings().duckdb_memory_limit
            console.print(f"[bold red]error:[/] DuckDB ran out of its {limit} working memory ({str(exc).splitlines()[0]}). "
                          "Raise `duckdb_memory_limit` in the workspace's propel.toml (e.g. \"6GB\") or load fewer "
                          "files at once.")
            raise typer.Exit(2) from None
    return wrapper


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Annotated[Optional[Path], typer.Option("--workspace", "-w", envvar="PROPEL_HOME",
                                                      help="Workspace folder holding all state (default: current folder).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Workspace.resolve(workspace)
    from propel.lake.schema import check_settings

    try:
        check_settings(ctx.obj.settings())
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
@friendly
def generate(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write raw files into (ground truth goes to OUT_DIR/_truth).")],
    customers: Annotated[int, typer.Option(min=10, help="Number of people to simulate.")] = 20_000,
    days: Annotated[int, typer.Option(min=7, help="Days of history.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 7,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    end: Annotated[Optional[datetime], typer.Option(formats=["%Y-%m-%d"], help="Last day of history.")] = None,
    clean: Annotated[bool, typer.Option("--clean", help="No injected dirty rows.")] = False,
) -> None:
    """Write a realistic synthetic retailer (customers, identities, events, campaigns) as raw files."""
    from propel.demo.generate import DirtyRates, generate as run

    if fmt not in ("csv", "parquet"):
        raise UserError(f"--format must be csv or parquet, not '{fmt}'")
    kwargs = {"end": end.date()} if end else {}
    report = run(out_dir, customers=customers, days=days, seed=seed, fmt=fmt,
                 dirty=DirtyRates.none() if clean else DirtyRates(), progress=True, **kwargs)
    console.print(f"[green]generate[/] {report.summary()}")


@app.command()
@friendly
def ingest(
    ctx: typer.Context,
    raw_dir: Annotated[Path, typer.Argument(help="Folder of raw CSV/Parquet files, named by table (events_*.csv, ...).")],
    now: Annotated[Optional[datetime], typer.Option(help="Reference time for future-timestamp checks (default: now).")] = None,
) -> None:
    """Validate, clean and append new raw files to the lake; resolve identities."""
    from propel.lake.ingest import ingest as run

    ws: Workspace = ctx.obj
    _print_load("ingest", run(raw_dir, ws, now=now.replace(tzinfo=now.tzinfo or timezone.utc) if now else None, progress=True))


def _print_load(command: str, report) -> None:
    """A load's counts per table (input = accepted + quarantined + duplicates), top reasons, coercions."""
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    for name, counts in report.tables.items():
        top = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.reasons.items(), key=lambda kv: -kv[1])[:4])
        console.print(f"  {name:17} in {counts.input:>10,}  accepted {counts.accepted:>10,}  quarantined "
                      f"{counts.quarantined:>8,}  duplicates {counts.duplicates:>8,}  {top}")
        for column, forms in counts.coercions.items():  # how values not in the canonical form were read
            read = ", ".join(f"{form} {n:,}" for form, n in forms.items() if form != "as")
            if read:
                console.print(f"    coerced {name}.{column} to {forms['as']}: {read}")
    console.print(f"[green]{command}[/] {report.summary()}")


stream_app = typer.Typer(help="The event log behind POST /events: move it into the lake, fold it into real-time features.",
                         no_args_is_help=True)
app.add_typer(stream_app, name="stream")


@stream_app.command("flush")
@friendly
def stream_flush(
    ctx: typer.Context,
    batch: Annotated[int, typer.Option(min=1, help="Most events per load (one lake version each).")] = 500_000,
) -> None:
    """Move the logged events not yet in the lake into it, each exactly once (deduplicated by event_id
    with file-ingested events), as loads with the same checks, quarantine and manifest as `propel ingest`."""
    from propel.lake.flush import flush

    while True:
        report = flush(ctx.obj, limit=batch, progress=True)
        _print_load("stream flush", report)
        if report.load_id is None or report.tables["events"].input < batch:
            break


@stream_app.command("run")
@friendly
def stream_run(
    ctx: typer.Context,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Stop once the log has nothing new.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another consumer of this workspace to stop, and retry "
                                       "failures (no features applied yet, the store down): how `propel serve` runs it.")] = False,
) -> None:
    """Fold the event log into the real-time features (the customer_realtime view) as events arrive; `propel
    serve` runs this itself (a process beside the server) unless [stream] consume = false. Ctrl-C or SIGTERM
    stops; a restart goes on where it stopped."""
    import signal
    import threading

    from propel.featurestore import realtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if wait:
        try:
            realtime.follow(ctx.obj, stop)
        except KeyboardInterrupt:
            pass
        return
    lock = realtime.claim(ctx.obj)
    if lock is None:
        raise UserError("a stream consumer already runs in this workspace (`propel serve`'s or another `propel "
                        "stream run`); set [stream] consume = false in propel.toml to run it here instead")
    try:
        consumer = realtime.Consumer(ctx.obj)
    except realtime.NotApplied as exc:
        raise UserError(str(exc)) from None
    try:
        done = consumer.run(stop, until_idle)
    except KeyboardInterrupt:
        done = None
    finally:
        consumer.close()
        lock.close()
    console.print(f"[green]stream run[/] {'stopped' if done is None or stop.is_set() else f'{done:,} events folded'}")


OnlineOption = Annotated[Optional[str], typer.Option("--online", help="Online store: sqlite or redis (default: propel.toml, else sqlite).")]


@app.command()
@friendly
def forget(
    ctx: typer.Context,
    customer_ids: Annotated[list[str], typer.Argument(help="Customer ids to forget (merged-away ids resolve to the person).")],
    online: Annotated[Optional[str], typer.Option("--online", help="Not needed: every online store in use (SQLite, Redis) "
                                                                   "is cleaned; accepted so older scripts still run.")] = None,
) -> None:
    """Remove people from the lake, quarantine, feature tables, every online store, the served-recommendations
    log and the recommender's packages (a running server stops personalising for them at once), and keep them
    out of future loads. Running it again with the same ids finishes a run that stopped half-way."""
    from propel.forget import forget as run

    report = run(ctx.obj, customer_ids)
    console.print(f"[green]forget[/] {report.summary()}")
    if report.not_found:
        raise typer.Exit(1)


features_app = typer.Typer(help="Feature store: build snapshots, register them in Feast, load the online store.",
                            no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("build")
@friendly
def features_build(
    ctx: typer.Context,
    every_days: Annotated[Optional[int], typer.Option(min=1, help="Days between snapshots (default: [features] every_days, 7).")] = None,
    snapshots: Annotated[Optional[int], typer.Option(min=1, help="Number of snapshots (default: [features] snapshots, 52).")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (this machine), or spark: the same SQL on Apache Spark "
                                             "(master: [spark] master in propel.toml).")] = "duckdb",
) -> None:
    """Compute point-in-time customer and item feature snapshots from the lake (DuckDB or Spark)."""
    from propel.features.build import build

    ws: Workspace = ctx.obj
    cfg = ws.settings().features
    report = build(ws, every_days or cfg.every_days, snapshots or cfg.snapshots, progress=True, engine=engine)
    console.print(f"[green]features build[/] {report.summary()}")


@features_app.command("apply")
@friendly
def features_apply(ctx: typer.Context, online: OnlineOption = None) -> None:
    """Register entities, feature views and feature services in the Feast registry, and write the workspace's
    Feast repo (data/feast/repo) for Feast's own CLI."""
    import time

    from propel.featurestore.store import apply

    started = time.perf_counter()
    names = apply(ctx.obj, online)
    console.print(f"[green]features apply[/] {len(names)} objects registered ({time.perf_counter() - started:.1f}s); "
                  f"Feast repo: {ctx.obj.feast_repo}")


@features_app.command("materialize")
@friendly
def features_materialize(ctx: typer.Context, online: OnlineOption = None) -> None:
    """Load the newest feature snapshot into the online store (incremental)."""
    from propel.featurestore.store import materialize

    report = materialize(ctx.obj, online)
    console.print(f"[green]features materialize[/] {len(report['views'])} views up to {report['up_to']} ({report['seconds']}s)")




@app.command()
@friendly
def train(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="churn, propensity, uplift, recommender, or all.")],
    tune_seconds: Annotated[float, typer.Option("--tune-seconds", min=0, help="Optuna search budget in seconds (0 = off).")] = 0,
    truth: Annotated[Optional[Path], typer.Option(help="Generator ground truth (_truth/) to report oracle metrics.")] = None,
) -> None:
    """Train a task (on Feast features; the recommender on the lake's events), log it to MLflow, promote it if it
    beats the champion."""
    import importlib

    from propel.training.pipeline import NotEligible
    from propel.training.tasks import TASKS

    oracle = None
    if truth:
        from propel.demo.oracle import Oracle

        oracle = Oracle(truth)
    tasks = TASKS if task == "all" else (task,)
    if not set(tasks) <= set(TASKS):
        raise UserError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}, or all")
    failed = False
    for name in tasks:
        try:
            result = importlib.import_module(f"propel.training.{name}").train(ctx.obj, tune_seconds, oracle)
        except NotEligible as exc:
            console.print(f"[bold red]not trained:[/] {exc}")
            failed = True
            continue
        console.print(f"[green]train[/] {result.summary()}")
    if failed:
        raise typer.Exit(2)


models_app = typer.Typer(help="Registered models: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@friendly
def models_list(ctx: typer.Context) -> None:
    """Every registered version, its selection metric and which one is champion."""
    from rich.table import Table

    from propel.training.registry import list_models

    table = Table("task", "version", "champion", "created", "metric", "value")
    for r in list_models(ctx.obj):
        value = f"{r['value']:.4f}" if r["value"] is not None else ""
        table.add_row(r["task"], str(r["version"]), "yes" if r["champion"] else "", r["created"], r["metric"] or "", value)
    Console().print(table)


@models_app.command("promote")
@friendly
def models_promote(ctx: typer.Context, task: Annotated[str, typer.Argument(help="Model name (task).")],
                   version: Annotated[int, typer.Argument(help="Version to make champion.")]) -> None:
    """Make a version the champion by hand (recorded in the alias history)."""
    from propel.training.registry import set_champion

    entry = set_champion(ctx.obj, task, version, "manual promotion")
    console.print(f"[green]models promote[/] {task}: champion v{entry['from_version']} -> v{entry['to_version']}")


@models_app.command("rollback")
@friendly
def models_rollback(ctx: typer.Context, task: Annotated[str, typer.Argument(help="Model name (task).")]) -> None:
    """Give the champion alias back to the previous champion."""
    from propel.training.registry import rollback

    entry = rollback(ctx.obj, task)
    console.print(f"[green]models rollback[/] {task}: champion v{entry['from_version']} -> v{entry['to_version']}")


@app.command()
@friendly
def score(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="churn, propensity, uplift, recommender (top-K items per customer, or an "
                                             "item audience with --item/--category) or nba (next best action).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="CSV or Parquet file to write (summary JSON next to "
                                                                    "it); without it, print the summary only.")] = None,
    as_of: Annotated[Optional[datetime], typer.Option("--as-of", formats=["%Y-%m-%d"],
                                                      help="Features from the newest snapshot on or before this day "
                                                           "(default: the latest).")] = None,
    where: Annotated[Optional[str], typer.Option(help="Audience filter (SQL condition) over features, CRM attributes "
                                                      "and segments: \"city_tier = 1 AND days_since_last_purchase < 90\".")] = None,
    top: Annotated[Optional[str], typer.Option(help="Keep the best-scored share (10%) or number (5000) of the audience.")] = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Keep only scores at or above this.")] = None,
    persuadables: Annotated[bool, typer.Option("--persuadables", help="uplift: only customers the contact is predicted "
                                                                      "to help (uplift > 0).")] = False,
    channel: Annotated[Optional[str], typer.Option(help="propensity/uplift: channel of the planned contact.")] = None,
    offer: Annotated[Optional[str], typer.Option(help="propensity/uplift: offer type of the planned contact.")] = None,
    campaign: Annotated[Optional[str], typer.Option(help="propensity/uplift: take channel and offer from this lake campaign.")] = None,
    campaigns: Annotated[Optional[Path], typer.Option(help="nba: CSV/JSON of actions (campaign_id, channel, offer_type, "
                                                           "cost per contact); default: campaigns active at --send-at.")] = None,
    send_at: Annotated[Optional[datetime], typer.Option("--send-at", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"],
                                                        help="Planned send time, UTC (calendar features; default now).")] = None,
    item: Annotated[Optional[str], typer.Option(help="recommender: rank customers by how much they would want this item.")] = None,
    category: Annotated[Optional[str], typer.Option(help="recommender: ... or any item of this category.")] = None,
    k: Annotated[Optional[int], typer.Option(min=1, help="recommender: items per customer (default [score] recommendations).")] = None,
    reasons: Annotated[Optional[int], typer.Option(min=0, help="Reason codes per customer (default 3; 0 = none, faster).")] = None,
    contact_cap: Annotated[Optional[int], typer.Option("--contact-cap", min=0, help="nba: no action for customers sent "
                                                                                   "this many messages in 30 days.")] = None,
    ignore_consent: Annotated[bool, typer.Option("--ignore-consent", help="Analysis only: include customers without "
                                                                          "marketing consent. Never use for contact lists.")] = False,
    engine: Annotated[str, typer.Option(help="local, or spark: churn/propensity/uplift scores computed on Apache Spark "
                                             "(master: [spark] master in propel.toml).")] = "local",
) -> None:
    """Score customers (or an audience) with a task's champion and export them with deciles, ranks and reasons."""
    from propel.serving.audience import Top
    from propel.serving.batch import Selection, describe
    from propel.serving.export import ScoreRequest, execute

    selection = Selection(where, Top.parse(top), min_score, persuadables, not ignore_consent)
    req = ScoreRequest(task, out, as_of.date() if as_of else None, selection, channel, offer, campaign, campaigns,
                       send_at, item, category, k, reasons, contact_cap, engine)
    summary = execute(ctx.obj, req, progress=True)
    for line in describe(summary):
        console.print(line)


@app.command()
@friendly
def segments(ctx: typer.Context, online: OnlineOption = None) -> None:
    """Segment every feature snapshot (RFM, lifecycle, value tier, behavioural clusters) and load them into Feast."""
    from propel.analytics import segments as run

    report = run.build(ctx.obj, progress=True)
    run.publish(ctx.obj, online)
    console.print(f"[green]segments[/] {report.summary()}")


@app.command()
@friendly
def attribution(
    ctx: typer.Context,
    level: Annotated[str, typer.Option(help="channel or campaign.")] = "channel",
    lookback_days: Annotated[Optional[int], typer.Option("--lookback-days", min=1, help="Touches this many days before an order can get credit (default 7).")] = None,
    half_life_days: Annotated[Optional[float], typer.Option("--half-life-days", min=0.01, help="Time-decay half-life in days (default 7).")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="Generator ground truth (_truth/): rank correlation of each model with the planted lift.")] = None,
) -> None:
    """Credit orders to channels and campaigns under every model, with cost, ROI and CAC (saved as CSV)."""
    from rich.table import Table

    from propel.analytics.attribution import LEVELS, attribute

    if level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}, not '{level}'")
    result = attribute(ctx.obj, lookback_days, half_life_days)
    out = Console(width=max(Console().width, 160))
    for title, frame in ((f"Attributed conversions by model ({result.lookback_days}-day lookback)", result.side_by_side(level)),
                         ("Cost, attributed revenue, ROI and CAC", result.money(level))):
        table = Table(level, *frame.columns, title=title)
        for key, row in frame.iterrows():
            table.add_row(str(key), *("" if v != v else f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}" for v in row))
        out.print(table)
    if truth:
        from propel.analytics.attribution import rank_correlation
        from propel.demo.oracle import Oracle
        from propel.lake.tables import Lake

        channel_of = Lake(ctx.obj).connect().execute("SELECT campaign_id, channel FROM campaigns").df()
        lift = Oracle(truth).lift_per_send(channel_of.set_index("campaign_id")["channel"] if level == "channel" else None)
        rho = rank_correlation(result, lift, level)
        out.print(f"Spearman correlation of credited conversions per send with the planted lift per send ({level}): "
                  + ", ".join(f"{m} {r:.2f}" for m, r in rho.items()))
    path = result.save(ctx.obj.reports)
    console.print(f"[green]attribution[/] {result.converting_paths:,} converting paths of {result.paths:,}, "
                  f"{result.organic_orders:,} orders without touches -> {path}")


@app.command()
@friendly
def serve(
    ctx: typer.Context,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port (default: serve.port, 3000).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Server processes (default: serve.workers, 2).")] = None,
) -> None:
    """Serve recommendations and scores over HTTP (BentoML) with the registry's champions, and the stream consumer
    as a process beside it (unless [stream] consume = false); Ctrl-C stops both."""
    import os
    import sys

    ws: Workspace = ctx.obj
    if not ws.root.is_dir():
        raise UserError(f"no workspace at {ws.root}; pass --workspace DIR or set PROPEL_HOME")
    from propel.training.registry import tracking

    # The registry's database is created (and migrated) here, once: workers starting together on a fresh
    # workspace would each run MLflow's migrations, and all but one fail.
    tracking(ws).search_registered_models(max_results=1)
    cfg = ws.settings().serve
    host, port = host or cfg.host, port or cfg.port
    console.print(f"[green]serve[/] {ws.root} on http://{host}:{port} ({workers or cfg.workers} workers; /docs for the API)")
    bentoml = Path(sys.executable).parent / "bentoml"
    root = Path(__file__).resolve().parents[1]
    server = [str(bentoml), "serve", "propel.serving.service:Propel", "--working-dir", str(root), "--host", host,
              "--port", str(port), "--arg", f"workers={workers or cfg.workers}"]
    env = {**os.environ, "PROPEL_HOME": str(ws.root)}
    if not ws.settings().stream.consume:
        os.execve(bentoml, server, env)
    consumer = [str(Path(sys.executable).parent / "propel"), "--workspace", str(ws.root), "stream", "run", "--wait"]
    raise typer.Exit(_supervise(server, consumer, env))


def _supervise(server: list[str], consumer: list[str], env: dict, restart_seconds: float = 5.0) -> int:
    """`propel serve` with its stream consumer: the server and the consumer as two child processes (the consumer's
    folding never takes a serving worker's GIL), the consumer restarted when it dies (at most every
    restart_seconds), both stopped on SIGTERM/SIGINT or when the server exits; the server's exit code."""
    import signal
    import subprocess
    import time

    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    procs = {"server": subprocess.Popen(server, env=env)}
    started = 0.0
    while not stopping and procs["server"].poll() is None:
        if procs.get("consumer") is None or procs["consumer"].poll() is not None:
            if time.monotonic() - started >= restart_seconds:
                if "consumer" in procs:
                    console.print(f"[yellow]serve[/] the stream consumer exited ({procs['consumer'].returncode}); restarted")
                procs["consumer"], started = subprocess.Popen(consumer, env=env), time.monotonic()
        time.sleep(0.2)
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return procs["server"].returncode if not stopping else 0


@app.command()
@friendly
def monitor(
    ctx: typer.Context,
    now: Annotated[Optional[datetime], typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="Reference time, UTC (default: now).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON result (default data/reports/monitor.json, "
                                                                    "monitor_live.json with --live).")] = None,
    live: Annotated[bool, typer.Option("--live", help="Instead: each channel's conversion and volume in the last hour "
                                                      "of the event log (POST /events) against earlier hours.")] = False,
) -> None:
    """Check feature and score drift, data freshness and daily KPIs (or, with --live, the last hour of events);
    exit 1 when an alert fires."""
    from propel.analytics import live_monitor, monitor

    ws: Workspace = ctx.obj
    result = (live_monitor if live else monitor).check(ws, now.replace(tzinfo=now.tzinfo or timezone.utc) if now else None)
    path = monitor.write(result, out or ws.reports / ("monitor_live.json" if live else "monitor.json"))
    for alert in result["alerts"]:
        console.print(f"[bold red]alert[/] {alert['kind']}: {alert['message']}")
    if "skipped" in result:
        console.print(f"[yellow]monitor --live[/] {result['skipped']}")
    console.print(f"[green]monitor{' --live' if live else ''}[/] {len(result['alerts'])} alert(s) -> {path}")
    if result["alerts"]:
        raise typer.Exit(1)


@app.command()
@friendly
def report(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default data/reports/report.html).")] = None,
    now: Annotated[Optional[datetime], typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="Reference time for monitoring, UTC (default: now).")] = None,
) -> None:
    """Write one self-contained HTML report: KPIs, segments, attribution, A/B tests, recommendations, model cards, monitoring."""
    from propel.analytics.report import write_report

    path = write_report(ctx.obj, out, now.replace(tzinfo=now.tzinfo or timezone.utc) if now else None)
    console.print(f"[green]report[/] {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    app()

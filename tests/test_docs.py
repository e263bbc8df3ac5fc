"""Docs generated from code or records must be committed up to date (`make docs`, `python bench/report.py`)."""

import copy

from bench import report
from propel.docs import DOCS, SECTIONS, render


def test_generated_doc_sections_are_current():
    for doc, sections in SECTIONS.items():
        text = (DOCS / doc).read_text()
        assert render(text, sections) == text, f"docs/{doc} is stale: run `make docs`"


def test_benchmarks_doc_is_what_the_reference_records_render():
    text = report.DOC.read_text()
    assert report.render(report.load(), text) == text, "docs/benchmarks.md is stale: run `python bench/report.py`"
    scale = report.SCALE_DOC.read_text()
    assert report.render(report.load(), scale, ("scale",)) == scale, "docs/scale.md is stale: run `python bench/report.py`"


def test_reference_records_of_bench_rows_describe_them_as_the_bench_does():
    """A row `make bench` measures keeps the bench's wording and target, so a run replaces it in place."""
    metrics = {m.key: m for m in report.METRICS}
    recs = report.load()
    assert all(set(r) == set(report.FIELDS) and r["stage"] in (*report.STAGES, "scale") for r in recs)
    assert len({r["key"] for r in recs}) == len(recs)
    drifted = [r["key"] for r in recs if r["key"] in metrics
               and (r["stage"], r["what"], r["target"]) != (metrics[r["key"]].stage, metrics[r["key"]].what,
                                                            metrics[r["key"]].target)]
    assert drifted == []
    assert set(metrics) <= {r["key"] for r in recs}, "every row the bench measures has a reference figure"


def test_a_bench_run_replaces_its_rows_newest_first_and_the_tables_show_it():
    machine = {"cores": 8, "memory_gib": 31.2, "cpu": "Some CPU", "virtualised": False, "python": "3.11.9"}
    wrk = {"p50_ms": 1.0, "p95_ms": 2.0, "max_ms": 9.0, "non_2xx": 0, "socket_errors": 0}
    run = {"when": "2030-01-02T03:04:05+00:00", "machine": machine, "rows": [
        {"stage": "ingest-10m ingest", "seconds": 71.234, "peak_rss_gib": 3.2, "events": 9_288_915,
         "events_per_s": 130_400},
        {"stage": "features-1m materialize sqlite", "seconds": 150.0, "peak_rss_gib": 2.9, "entities": 2_000_000},
        *[{"stage": f"serve /recommend c={c}", "rps": rps, "p99_ms": p99, **wrk}
          for c, rps, p99 in ((1, 1500, 1.5), (8, 2500, 7.25), (32, 900, 30.0))],
        {"stage": "not a row of the reference", "seconds": 1.0, "peak_rss_gib": 0.1}]}
    new = {r["key"]: r for r in report.records(run)}
    # docs/scale.md's rows read the same runs
    assert set(new) == {"ingest-10m ingest", "features-1m materialize sqlite", "serve /recommend closed loop",
                        "scale 200k ingest", "scale 1M materialize"}
    ingest = new["ingest-10m ingest"]
    assert (ingest["figure"], ingest["met"]) == ("71.2 s (130k events/s), peak 3.20 GiB", "no (time)")
    assert (ingest["date"], ingest["machine"]) == ("2030-01-02", "8 cores (Some CPU), 31.2 GiB")
    assert ingest["command"] == "`BENCH=ingest-10m make bench`"
    assert new["features-1m materialize sqlite"]["figure"].startswith("150 s for 2.00M entities = 75 s per 1M")
    assert new["features-1m materialize sqlite"]["met"] == "yes"
    assert new["serve /recommend closed loop"]["figure"] == "RPS 1,500 / 2,500 / 900; p99 1.5 / 7.25 / 30 ms; 0 errors"
    assert new["serve /recommend closed loop"]["met"] == "no (RPS)"

    old = report.load()
    merged = report.merge(old, list(new.values()))
    assert [r["key"] for r in merged] == [r["key"] for r in old]  # rows keep their place
    assert {r["key"]: r for r in merged}["ingest-10m ingest"] == ingest
    stale = copy.deepcopy(ingest) | {"date": "2001-01-01", "figure": "1 s"}
    assert report.merge(merged, [stale]) == merged  # an older figure never replaces a newer one

    text = report.render(merged, report.DOC.read_text())
    assert "| 71.2 s (130k events/s), peak 3.20 GiB | no (time) | 2030-01-02 | 8 cores (Some CPU), 31.2 GiB |" in text
    assert "33.1 / 50.6 / 44.8 s" not in text
    assert text.count("| ingest ~9.3M events") == 1


def test_every_bench_row_is_read_from_a_whole_run():
    """Rows of every kind `bench/run.py` writes (shapes as its stages record them) give every metric a figure."""
    timed = lambda label, **kw: {"stage": label, "seconds": 12.345, "peak_rss_gib": 1.5, **kw}
    lat = {"p50_ms": 0.5, "p99_ms": 1.25}
    wrk = {"rps": 1234, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 9.0, "non_2xx": 0, "socket_errors": 0}
    reads = "features-1m online reads + training set"
    rows = [*[timed(f"{s} {stage}", events_per_s=84_000) for s in ("ingest-1m", "ingest-10m", "features-1m")
              for stage in ("generate", "ingest")],
            *[timed(f"{s} {stage}", entities=1_552_000, feature_bytes=1_400_000_000)
              for s in ("features-1m", "scale-20k", "scale-200k")
              for stage in ("features build", "materialize sqlite", "materialize redis", "train churn", "score churn")],
            *[timed(f"{s} online reads + training set", training_set={"rows": 80_000, "columns": 84, "seconds": 2.0})
              for s in ("scale-20k", "scale-200k")],
            timed("features-1m sqlite insert floor", seconds_per_1m_entities=40.5),
            timed(reads, **{f"online_{n}_{s}": lat for n in (1, 100) for s in ("redis", "sqlite")},
                  training_set={"rows": 1_000_000, "columns": 84, "seconds": 23.5}),
            *[timed(f"score-1m {label}", exported=929_674, in_process_seconds=4.8, output_mib=11.0) for label in
              ("all customers -> parquet, no reasons", "all customers -> csv, no reasons",
               "top 10% -> csv with 3 reasons", "where + top 5000 -> csv with 3 reasons")],
            *[timed(f"shape {name}", events=1000, customers=500, label_rows=400, protocol="customer_holdout+cv5",
                    selected="additive", roc_auc=0.8, logistic_roc_auc=0.79, heuristic_roc_auc=None,
                    gap_to_best_baseline=0.0) for name in report.SHAPES],
            timed("recommender ALS fit", fit_seconds=268.0),
            timed("recommender package + recommend() + batch top-10", package_seconds=11.6, batch_top10_seconds=43.0,
                  **{f: lat for f in ("recommend_top10", "recommend_top10_category_price",
                                      "recommend_top10_fold_in_3_fresh", "similar_items_top10")}),
            timed("shape sparse_interactions (recommender)", events=69_065, protocol="leave_last_out", winner="als",
                  test_customers=610, ndcg_at_10=0.202, popular_ndcg_at_10=0.1128, lift_over_popular=1.79),
            *[{"stage": f"{prefix} c={c}", **wrk} for c in (1, 8, 32) for prefix in
              ("control (bare uvicorn echo)", *(f"serve {n}" for n in ("/recommend", "/similar_items", "/score/churn",
                                                                       "/score/propensity", "/score/uplift",
                                                                       "/score/churn (100 ids)")))],
            *[{"stage": label, **wrk} for label in ("serve /recommend at 200 RPS", "serve /score/churn at 50 RPS",
                                                    "control (bare uvicorn echo) at 200 RPS",
                                                    "control (bare uvicorn echo) at 50 RPS")],
            *[{"stage": f"intake http batch {n}", "clients": 32, "events_per_s": 7000, "p50_ms": 300.0, "p99_ms": 600.0,
               "acknowledged": 1000, "lost": 0, "logged_twice": 0} for n in (100, 1000)],
            {"stage": "intake crash (kill -9 under load)", "acknowledged": 1000, "lost": 0, "logged_twice": 0, "lake_lost": 0,
             "lake_twice": 0},
            {"stage": "freshness /recommend alone", **wrk, "cores": 2,
             "cpu_per_s": {"worker": 0.5, "consumer": 0.0, "client": 0.3, "machine": 0.9}},
            timed("freshness under load", **wrk, cores=2, events_per_s=1000,
                  cpu_per_s={"worker": 0.5, "consumer": 0.05, "client": 0.3, "machine": 0.9},
                  freshness_recommend={"p50_ms": 70.0, "p99_ms": 190.0, "reflected": 16, "probes": 16},
                  freshness_churn={"p50_ms": 70.0, "p99_ms": 1500.0, "reflected": 16, "probes": 16}),
            {"stage": "realtime crash (kill -9 consumer, then server)", "acknowledged": 1900, "consumer_restarted": True,
             "lost": 0, "logged_twice": 0, "online_profiles": 1900, "online_wrong": 0, "lake_lost": 0, "lake_twice": 0},
            {"stage": "realtime stream state", "profiles": 6932, "bytes_per_profile": 280, "max_bytes": 317,
             "max_window": 4, "max_items": 1}]
    machine = {"cores": 2, "memory_gib": 23.5, "cpu": "AMD EPYC", "virtualised": True}
    recs = {r["key"]: r for r in report.records({"when": "2030-01-02T00:00:00+00:00", "machine": machine,
                                                 "rows": rows})}
    assert set(recs) == {m.key for m in report.METRICS}
    assert recs["realtime freshness"]["met"] == "no (/score/churn)"
    assert recs["realtime /recommend under load"]["figure"] == ("p50 1 / p95 2 / p99 3 / max 9 ms; CPU s/s: worker 0.50, "
                                                               "consumer 0.05, client 0.30; whole machine 0.90 of 2 cores")
    assert recs["realtime crash consumer and server"]["met"] == "yes"
    assert recs["recommender recommend"]["figure"] == "p50 0.5 / p99 1.25 ms"
    assert recs["recommender recommend"]["met"] == "no"
    assert recs["recommender sparse shape"]["figure"] == ("NDCG@10 0.202 vs popularity 0.113 = 1.79x (als; leave_last_out, "
                                                          "610 test customers, 69,065 events)")
    assert recs["recommender sparse shape"]["met"] == "yes"
    assert recs["features-1m training set"]["figure"] == "23.5 s, peak 1.50 GiB"
    assert recs["features-1m feature bytes"]["figure"] == "1.30 GiB = 43% of the full snapshots' 3.00 GiB"
    assert recs["features-1m feature bytes"]["met"] == "no"
    assert recs["score-1m all customers -> csv, no reasons"]["figure"] == (
        "12.3 s (4.8 s in process), 929,674 exported, peak 1.50 GiB, 11 MiB")
    assert recs["serve /score/churn at 50 RPS"]["figure"] == "p50 1 / p95 2 / p99 3 / max 9 ms"
    assert recs["serve /score/churn at 50 RPS"]["machine"] == "2 cores (AMD EPYC, virtualised), 23.5 GiB"

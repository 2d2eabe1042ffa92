"""Driver parts that need no running stack: validation, recommendation, results files, plots, report."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driver import recommend, results
from driver.driver import main, parser
from driver.errors import ImpossibleSweep, ResultsError
from driver.load import LoadKind
from driver.plots import draw_all
from driver.results import batch_size_stats, rows
from driver.sweep import auto_concurrency, plan, steady
from driver.load import WindowStats
from driver.validate import Machine, build_spec
from schooner.topology import parse_cpu_list

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FOUR_CORES = Machine(usable_cpus=(0, 1, 2, 3), driver_cpus=(0,), gpus=(0,))


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def run_record(r: int, p: int, b: int, thruput: float, p99: float, errors: int = 0, defaults: int = 0) -> dict:
    cores = r * p
    return {"node_config": {"model": "sleep", "batch_size": b, "num_replicas": r, "cpus_per_replica": p,
                            "cpus": [0, 1, 2, 3], "gpus": [], "slo_ms": 50.0,
                            "load": {"kind": "closed", "concurrency": 8, "label": "c=8"}, "load_value": 8},
            "client_metrics": [], "clipper_metrics": {}, "replicas": [],
            "latencies_ms": [p99 * f for f in (0.2, 0.5, 0.8, 1.0)],
            "summary": {"thruput_qps": thruput, "p50_ms": p99 / 2, "p95_ms": p99 * 0.9, "p99_ms": p99,
                        "mean_ms": p99 / 2, "count": int(thruput * 10), "errors": errors, "defaults": defaults,
                        "mean_batch_size": float(max(b, 1)), "cores": cores, "thruput_per_core": thruput / cores,
                        "steady": True}}


def synthetic_doc() -> dict:
    doc = results.new_document({"model_name": "sleep"}, {"cpu_count": 4}, "sleep", 50.0, 150.0)
    doc["runs"] = [
        run_record(1, 1, 1, 90.0, 20.0),     # 90 qps/core, meets the SLO
        run_record(1, 1, 8, 160.0, 45.0),    # 160 qps/core, meets -> best per core
        run_record(2, 1, 8, 300.0, 48.0),    # 150 qps/core, meets, most throughput
        run_record(2, 1, 32, 500.0, 120.0),  # misses the SLO
        run_record(1, 2, 8, 170.0, 40.0, errors=50),  # fast but too many errors
    ]
    return doc


# -- validation -----------------------------------------------------------------------------------

def test_cpu_list_parsing_handles_ranges():
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


@pytest.mark.parametrize("argv, needle", [
    (["-m", "sleep", "-c", "7"], "do not exist"),
    (["-m", "sleep", "-c", "1", "2", "-r", "2", "-p", "2"], "needs 4 cores"),
    (["-m", "sleep", "-g", "3"], "GPU(s) [3] are not there"),
    (["-m", "sleep", "-b", "0"], "bad batch size 0"),
    (["-m", "sleep", "-b", "-2"], "bad batch size -2"),
    (["-m", "sleep", "-r", "0"], "bad replica count"),
    (["-m", "sleep", "--frontend", "127.0.0.1:5"], "go together"),
    (["-m", "sleep", "--concurrency", "4", "--rate", "10"], "not both"),
    (["-m", "sleep", "-c", "1", "2", "3", "--mode", "load", "--count", "4"], "mode load deploys"),
])
def test_impossible_sweep_is_refused_with_a_clear_message(argv, needle):
    with pytest.raises(ImpossibleSweep, match=None) as info:
        build_spec(args(*argv), FOUR_CORES)
    assert needle in str(info.value)


def test_default_model_cpus_leave_the_driver_cores_out():
    spec = build_spec(args("-m", "sleep"), FOUR_CORES)
    assert spec.model_cpus == [1, 2, 3]
    assert spec.frontend_cpus == [0]
    unpinned = Machine(usable_cpus=(0, 1), driver_cpus=(0, 1))
    assert build_spec(args("-m", "sleep"), unpinned).model_cpus == [1]


def test_sleep_model_options_merge_over_defaults():
    spec = build_spec(args("-m", "sleep", "--model_opts", '{"b_ms": 3}'), FOUR_CORES)
    assert spec.model_opts == {"a_ms": 5.0, "b_ms": 3}


def test_refused_cli_exits_2_before_starting_anything():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "driver" / "driver.py"), "-m", "sleep", "-c", "99"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and "99" in proc.stderr
    assert "starting a stack" not in proc.stderr
    assert time.monotonic() - t0 < 30


def test_plan_orders_configs_with_batching_varying_fastest():
    spec = build_spec(args("-m", "sleep", "-b", "1", "4", "-r", "1", "2", "-c", "1", "2", "3"), FOUR_CORES)
    cfgs = plan(spec)
    assert [(c.num_replicas, c.batch_size) for c in cfgs] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    assert all(c.load.kind is LoadKind.CLOSED for c in cfgs)
    # The load is held fixed across batch sizes (sized for the largest), so their goodputs compare.
    assert [c.load.concurrency for c in cfgs] == [auto_concurrency(1, 4)] * 2 + [auto_concurrency(2, 4)] * 2
    assert auto_concurrency(2, 4) == 16


def test_replicas_go_on_the_driver_and_frontend_cores_last():
    # -c 0 1 with the driver and frontend on core 0: a one-replica configuration gets core 1.
    spec = build_spec(args("-m", "sleep", "-c", "0", "1"), Machine(usable_cpus=(0, 1), driver_cpus=(0,)))
    assert spec.model_cpus == [1, 0] and spec.frontend_cpus == [0]


def test_steady_needs_three_windows_within_ten_percent():
    def w(t: float) -> WindowStats:
        return WindowStats(0, "x", 0, 1, int(t), t, None, None, None, None, None, 0, 0)
    assert not steady([w(100), w(100)])
    assert steady([w(50), w(100), w(105), w(109)])
    assert not steady([w(100), w(120), w(100)])


# -- recommendation -------------------------------------------------------------------------------

def test_slo_recommendation_picks_most_throughput_per_core_within_slo():
    rec = recommend.for_slo(synthetic_doc()["runs"], 50.0)
    assert rec.run_index == 1
    assert rec.thruput_per_core == pytest.approx(160.0)


def test_target_qps_recommendation_picks_fewest_cores_reaching_it():
    runs = synthetic_doc()["runs"]
    assert recommend.for_target_qps(runs, 150.0, 50.0).run_index == 1
    assert recommend.for_target_qps(runs, 200.0, 50.0).run_index == 2
    none = recommend.for_target_qps(runs, 400.0, 50.0)
    assert none.run_index is None and "300.0 qps" in none.reason


def test_no_recommendation_when_nothing_meets_the_slo():
    rec = recommend.for_slo(synthetic_doc()["runs"], 5.0)
    assert rec.run_index is None
    assert "20.0 ms" in rec.reason


def test_runs_with_many_defaults_are_not_eligible():
    runs = [run_record(1, 1, 1, 100.0, 10.0, defaults=500), run_record(2, 1, 1, 120.0, 12.0)]
    assert recommend.for_slo(runs, 50.0).run_index == 1


# -- results, plots, report -----------------------------------------------------------------------

def test_batch_size_mean_is_taken_over_the_new_batches_only():
    def dump(size: int, mean: float) -> dict:
        return {"histograms": [{"model:m:1:batch_size": {"unit": "queries", "size": size, "mean": mean}}]}
    assert batch_size_stats(None, dump(10, 4.0), "m", "1") == 4.0
    assert batch_size_stats(dump(10, 4.0), dump(30, 6.0), "m", "1") == pytest.approx(7.0)
    assert batch_size_stats(dump(10, 4.0), dump(10, 4.0), "m", "1") is None
    assert batch_size_stats(dump(100, 2.0), dump(10_000, 8.0), "m", "1") == 8.0
    assert batch_size_stats(None, {"histograms": []}, "m", "1") is None


def test_results_files_table_and_csv_hold_every_run(tmp_path):
    doc = synthetic_doc()
    doc["recommendation"] = recommend.recommend(doc["runs"], 50.0, 150.0)
    json_path, csv_path = results.write(doc, tmp_path, "240101_120000")
    assert json_path.name == "results-240101_120000.json"
    loaded = results.load(tmp_path)
    assert loaded["recommendation"]["slo"]["run_index"] == 1
    assert len(csv_path.read_text().strip().splitlines()) == 1 + len(doc["runs"])
    text = results.table(doc)
    assert len(text.splitlines()) == 1 + len(doc["runs"]) and "qps/core" in text  # every run steady
    assert rows(doc)[3]["p99_ms"] == 120.0


def test_load_refuses_a_file_that_is_not_driver_results(tmp_path):
    (tmp_path / "results-1.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ResultsError):
        results.load(tmp_path)
    with pytest.raises(ResultsError):
        results.load(tmp_path / "missing")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, path


def test_plots_are_valid_pngs(tmp_path):
    doc = synthetic_doc()
    doc["recommendation"] = recommend.recommend(doc["runs"], 50.0)
    paths = draw_all(doc, tmp_path, "s")
    names = sorted(p.name for p in paths)
    # Every configuration ran at one derived load level: no load plot.
    assert names == ["batch-s.png", "cdf-s.png", "replicas-s.png"]
    for p in paths:
        assert_png(p)


def test_a_plot_against_something_that_did_not_vary_is_not_drawn(tmp_path):
    doc = synthetic_doc()
    doc["runs"] = [r for r in doc["runs"] if r["node_config"]["num_replicas"] == 1]  # one replica count
    names = sorted(p.name for p in draw_all(doc, tmp_path, "s"))
    assert names == ["batch-s.png", "cdf-s.png"]


def test_plot_legends_say_replicas_and_cores_in_words():
    from driver.plots import _shape

    assert _shape({"num_replicas": 2, "cpus_per_replica": 1}) == "2 replicas × 1 core"
    assert _shape({"num_replicas": 1, "cpus_per_replica": 4}) == "1 replica × 4 cores"


def test_table_says_which_runs_reached_a_steady_state():
    doc = synthetic_doc()
    doc["runs"][3]["summary"]["steady"] = False
    text = results.table(doc)
    assert "steady" in text.splitlines()[0]
    assert text.splitlines()[4].rstrip().endswith("NO") and text.splitlines()[1].rstrip().endswith("yes")
    assert "run(s) 3 did not" in text


def test_a_swept_load_gets_its_own_plot(tmp_path):
    doc = synthetic_doc()
    extra = run_record(1, 1, 8, 200.0, 49.0)
    extra["node_config"]["load"] = {"kind": "closed", "concurrency": 16, "label": "c=16"}
    extra["node_config"]["load_value"] = 16
    doc["runs"].append(extra)
    names = sorted(p.name for p in draw_all(doc, tmp_path, "s"))
    assert "load-s.png" in names
    assert_png(tmp_path / "load-s.png")


def test_report_redraws_table_plots_and_recommendation_from_a_saved_dir(tmp_path, capsys):
    results.write(synthetic_doc(), tmp_path, "240101_120000")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[slo] run 1:" in out and "[target_qps] run 1:" in out
    for name in ("batch", "replicas", "cdf"):
        assert_png(tmp_path / f"{name}-240101_120000.png")
    assert results.load(tmp_path)["runs"][1]["summary"]["thruput_qps"] == 160.0


def test_report_on_an_empty_dir_exits_2(tmp_path):
    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.parametrize("mode, extra, expected", [
    ("latency", [], [1, 1]),
    ("throughput", ["-b", "1", "16"], [64, 64]),
    ("concurrent_inference", [], [1, 2, 4, 8, 16, 32] * 2),
    ("concurrent_inference", ["--concurrency", "3", "5"], [3, 5, 3, 5]),
])
def test_modes_choose_their_load_levels(mode, extra, expected):
    from driver.modes import sweep_configs

    spec = build_spec(args("-m", "sleep", "-b", "1", "8", "-c", "1", "2", "--mode", mode, *extra), FOUR_CORES)
    assert [c.load.concurrency for c in sweep_configs(spec)] == expected


# -- goodput ------------------------------------------------------------------------------------------

def test_goodput_counts_real_answers_within_the_objective_only():
    from types import SimpleNamespace

    from driver.load import LoadGenerator, LoadLevel
    from driver.results import summarize
    from schooner.errors import Overloaded

    now = [0.0]
    gen = LoadGenerator(None, "app", [0], LoadLevel.closed(1), clock=lambda: now[0], slo_ms=100.0)
    now[0] = 1.0
    gen._record(0.95, SimpleNamespace(default=False))  # 50 ms: good
    gen._record(0.85, SimpleNamespace(default=False))  # 150 ms: real but late
    gen._record(0.99, SimpleNamespace(default=True))  # a default output is never good
    gen._record(0.99, Overloaded("shed", 0.1))
    stats, lat = gen.take_window("measure")
    assert (stats.count, stats.good, stats.defaults, stats.errors) == (3, 1, 1, 1)
    s = summarize({"num_replicas": 1, "cpus_per_replica": 2}, [stats], lat, None, True, 0.0)
    assert s["goodput_qps"] == pytest.approx(1.0) and s["thruput_qps"] == pytest.approx(3.0)
    assert list(s)[0] == "goodput_qps" and s["goodput_per_core"] == pytest.approx(0.5)


def test_recommendation_ranks_by_goodput_not_throughput_with_defaults():
    late = run_record(1, 1, 1, 200.0, 20.0)
    late["summary"]["goodput_qps"] = 120.0  # many real answers came after the objective
    good = run_record(1, 1, 1, 150.0, 20.0)
    good["summary"]["goodput_qps"] = 150.0
    rec = recommend.for_slo([late, good], 50.0)
    assert rec.run_index == 1 and rec.goodput_qps == 150.0
    assert "goodput 150.0 qps" in rec.describe()
    assert recommend.for_target_qps([late, good], 140.0, 50.0).run_index == 1

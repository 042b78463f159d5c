"""The study-scale benchmark (benchmarks/study_scale.py) at a size a test affords: 5 trials on SQLite, with 1 and 2
workers, through the real study command with the stub for the fit."""

from __future__ import annotations

import json

from benchmarks import study_scale


def test_each_combination_gets_a_figure_and_its_study_finishes_exactly_its_trials(tmp_path, capsys):
    out = tmp_path / "scale.json"
    status = study_scale.main(["--trials", "5", "--storages", "sqlite", "--workers", "1,2", "--grpc-trials", "",
                               "--timeout", "240", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    record = json.loads(out.read_text())
    assert set(record["results"]) == {"sqlite:search:1:5", "sqlite:search:2:5"}
    for key, r in record["results"].items():
        workers = int(key.split(":")[2])
        assert r["finished_exactly"] and r["trials_complete"] == 5 and r["failed_trials"] == 0, r
        assert sum(r["trials_per_worker"]) == 5  # each trial ran the stub once; a spare never reaches it
        assert 0 < r["s_per_trial"] < 30 and r["worker_cpu_s_per_trial"] > 0 and r["sql_statements_per_trial"] > 0
        assert r["database_is_locked"] == 0 and r["exit_statuses"] == [0] * workers
        assert r["check_fit_args_calls"] == [1] * workers  # the study file's check: once per process, not per trial
        assert len(r["startup_s"]) == workers
    run = record["runs"][0]
    assert run["combinations"] == list(record["results"]) and {"avx2", "avx512_bf16", "amx"} <= set(run)
    assert run["versions"]["optuna"] and len(run["load_average_end"]) == 3
    assert "sqlite          search       1      5" in printed and "growth" not in printed  # one size: no growth


def test_growth_is_the_largest_studys_seconds_per_trial_over_the_smallest(capsys):
    def result(s: float) -> dict:
        return {"s_per_trial": s, "first_tenth_s_per_trial": s, "last_tenth_s_per_trial": s,
                "worker_cpu_s_per_trial": None, "startup_s": [9.0], "check_fit_args_s": [1.0], "spare_trials": 0,
                "database_is_locked": 0, "finished_exactly": True, "trials_complete": 1}

    growth = study_scale.print_table({"postgresql:search:4:20": result(0.1), "postgresql:search:4:200": result(0.12),
                                      "postgresql:search:4:2000": result(0.25), "sqlite:search:1:20": result(0.2),
                                      "sqlite:search:1:200": {"error": "a worker failed"}})
    assert growth == {"postgresql:search:4": {"trials": [20, 2000], "s_per_trial": 2.5, "worker_cpu_s_per_trial": None}}
    assert "a worker failed" in capsys.readouterr().out

"""Studies (``python -m fashion_cnn.study``) and their comparison, on the small fixture: bad study files refused in
one line before any training, a search that never reads the test set, two workers sharing one storage, and a study
killed mid-trial that resumes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from fashion_cnn import commands, compare, config, fit, study, study_file
from fashion_cnn import storage as storage_module
from fashion_cnn.data_files import DataError
from tests.helpers import FIXTURE, SMALL, scalars, signal_in_epoch_3, tree_digest

ON_FIXTURE = {"data.data_dir": str(FIXTURE), "data.verify": False, "data.download": False,
              "trainer.enable_model_summary": False, "trainer.log_every_n_steps": 4, "trainer.max_epochs": 1}
REPO = Path(__file__).parent.parent


def write_study(path: Path, **body) -> Path:
    body.setdefault("base", "fast")
    body["overrides"] = {**ON_FIXTURE, **body.get("overrides", {})}
    path.write_text(yaml.safe_dump(body))
    return path


def trials(study_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}").trials


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fashion_cnn.study", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


SPACE = {"model.lr": {"low": 0.01, "high": 0.2, "log": True}}


@pytest.mark.parametrize(("body", "message"), [
    ({"search": {"trials": 2, "space": {"model.lrr": {"low": 0.01, "high": 0.1}}}}, "unrecognized arguments"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": 0.1, "high": 0.1}}}}, "empty or inverted range"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": 0.2, "high": 0.1}}}}, "empty or inverted range"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": -1.0, "high": 0.1, "log": True}}}}, "log range"),
    ({"search": {"trials": 2, "space": {"data.batch_size": {"choices": []}}}}, "non-empty list"),
    ({"search": {"trials": 0, "space": SPACE}}, "search.trials must be a positive integer"),
    ({"search": {"trials": 2, "metric": "test/acc", "space": SPACE}}, "never reads the test set"),
    ({"search": {"trials": 2, "metric": "val/accuracy", "space": SPACE}}, "must be one that fit logs (val/acc"),
    ({"search": {"trials": 2, "metric": "val/loss", "direction": "maximize", "space": SPACE}},
     "maximize of val/loss would pick the worst trial"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": 0.01, "high": 0.5, "log": True, "step": 0.01}}}},
     "step must be a positive number, without log: true"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": 0.01, "high": 0.5, "step": 0}}}}, "step must be a posi"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": "1e-3", "high": 0.5}}}}, "write 1.0e-3"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": 0.01, "high": float("inf")}}}},
     "low and high must be finite numbers, got 0.01 and inf"),
    ({"search": {"trials": 2, "space": {"model.net.init_args.widths": {"choices": [[16, 32, 64], [32, 64, 128]]}}}},
     "each choice must be a number, a string, true/false or null"),
    ({"search": {"trials": 2, "space": {"model.net.init_args.widths": {"choices": [[], [16, 32, 64]]}}}},
     "each choice must be a number, a string, true/false or null (Optuna stores no other), got []"),
    ({"search": {"trials": 2, "space": {"model.lr": {"low": [0.1], "high": 0.5}}}},
     "must be numbers, got [0.1] and 0.5\n"),  # no hint about YAML's text numbers: it is not one
    # a choice fit refuses, between two it takes: every choice is parsed, not only the first and last
    ({"search": {"trials": 2, "space": {"model.schedule": {"choices": ["constant", "cosine", "onecycle"]}}}},
     "model.schedule"),
    ({"repeat": {"seeds": [-1, 0]}}, "repeat.seeds must be between 0 and 4294967295, got -1"),
    ({"repeat": {"seeds": [0, 0]}}, "repeat.seeds must be distinct integers"),
    ({"search": {"trials": 2, "direction": "up", "space": SPACE}}, "search.direction must be maximize or minimize"),
    ({"search": {"trials": 2, "val_size": 0, "space": SPACE}}, "search.val_size must be a positive number"),
    ({"search": {"trials": 2, "pruner": "early", "space": SPACE}}, "search.pruner must be one of"),
    ({"search": {"trials": 2, "space": ["model.lr"]}}, "search.space must map fit keys"),
    ({"search": {"trials": 2, "sampler": "tpe", "space": SPACE}}, "unknown key search.sampler"),
    ({"repeat": {"seeds": []}}, "repeat.seeds must be a non-empty list"),
    ({"repeat": {"seeds": [0]}, "search": {"trials": 1, "space": SPACE}}, "exactly one of"),
    ({"base": "nope", "repeat": {"seeds": [0]}}, "base 'nope'"),
    # values that parse but cannot run together: checked too, for the trials at both ends of the space
    ({"repeat": {"seeds": [0]}, "overrides": {"trainer.max_epochs": 0}}, "max_epochs must be positive"),
    ({"base": "quick", "repeat": {"seeds": [0]}, "overrides": {"model.final_shift": 2}}, "final_shift to at most 1"),
    ({"base": "seed", "search": {"trials": 2, "space": {"data.erase": {"low": 0.0, "high": 0.5}}}},
     "data.erase=0.5 does nothing without augmentation"),
])
def test_bad_study_files_are_one_line_before_any_training(tmp_path, capsys, body, message):
    path = write_study(tmp_path / "bad.yaml", **body)
    assert study.main([str(path), "--dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    # jsonargparse spells "unrecognized arguments" with a capital U in some versions
    assert message.lower() in err.lower() and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_study_file_or_base_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("repeat:\n  seeds: [0]\n", encoding="utf-16")
    assert study.main([str(utf16), "--dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.endswith(f"{utf16}: not a UTF-8 text file; give a study YAML file saved as UTF-8\n")
    path = write_study(tmp_path / "on_utf16.yaml", base=str(utf16), repeat={"seeds": [0]})
    assert study.main([str(path), "--dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{utf16} is not a UTF-8 text file; give a fit config (YAML)" in err
    assert not (tmp_path / "out").exists()


def test_unreachable_storage_reused_name_and_bad_usage(tmp_path, capsys):
    repeat = write_study(tmp_path / "same.yaml", repeat={"seeds": [0, 1]})
    # An existing study (created, no trial run yet): joining it with another definition changes nothing.
    study_dir = tmp_path / "existing"
    study_dir.mkdir()
    storage = storage_module.open_storage(f"sqlite:///{study_dir / 'study.db'}", 10)
    study.open_study(study_file.load(repeat), storage)
    before = tree_digest(study_dir)
    other = write_study(tmp_path / "other.yaml", name="same", repeat={"seeds": [0, 1, 2]})
    assert study.main([str(other), "--dir", str(study_dir)]) == 1
    assert "already used by a study with another config, space or seeds" in capsys.readouterr().err
    searched = write_study(tmp_path / "s.yaml", name="same", search={"trials": 1, "space": SPACE})
    assert study.main([str(searched), "--dir", str(study_dir)]) == 1
    assert "already used" in capsys.readouterr().err
    assert tree_digest(study_dir) == before

    assert study.main([str(repeat), "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the storage sqlite:///" in err and err.count("\n") == 1
    assert study.main([str(repeat), "--storage", f"journal:{tmp_path}/no/such/dir/x.log"]) == 1
    assert "cannot reach the storage journal:" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert study.main([str(repeat), "--dir", str(tmp_path / "a_file")]) == 1
    assert "not a writable directory; choose another place with --dir DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        study.main([str(repeat), "--workers", "0"])
    assert usage.value.code == 2 and "argument --workers: '0' is not a positive integer" in capsys.readouterr().err


def test_a_search_selects_on_validation_and_measures_the_winner_once(tmp_path, capsys):
    path = write_study(tmp_path / "search.yaml", search={
        "trials": 2, "val_size": 100, "pruner": "median",
        "space": {"model.lr": {"low": 0.02, "high": 0.2, "log": True}, "data.batch_size": {"choices": [32, 64]}}})
    study_dir = tmp_path / "search"
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    done = [t for t in trials(study_dir, "search") if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and len({t.user_attrs["run_dir"] for t in done}) == 2
    for t in done:
        run = Path(t.user_attrs["run_dir"])
        assert run.parent == study_dir / "lightning_logs" and (run / "config.yaml").is_file()
        logged = scalars(run)
        assert "val/acc" in logged and not any(tag.startswith(("test", "final")) for tag in logged)
        assert t.value == pytest.approx(max(logged["val/acc"]))
    assert "Winner: trial" in out and "measured once" in out and "not measured (selection on val)" in out
    assert (study_dir / "comparison.md").is_file() and (study_dir / "comparison.png").is_file()
    winner = yaml.safe_load((study_dir / "winner_repeats.yaml").read_text())
    assert winner["repeat"]["seeds"] and "model.lr" in winner["overrides"]
    assert "data.val_size" not in winner["overrides"]  # trained as the base config trains
    assert study_file.load(study_dir / "winner_repeats.yaml").seeds == [0, 1, 2, 3, 4]
    # an older best-*.ckpt beside the winner's (a resumed trial can leave one; its name sorts first): not the one tested
    stored = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    tested = Path(stored.user_attrs["winner_test_acc"]["ckpt"])
    stale = tested.with_name("best-epoch00-val_acc0.0000.ckpt")
    shutil.copy(tested, stale)
    os.utime(stale, (tested.stat().st_mtime - 60,) * 2)
    stored.set_user_attr("winner_test_acc", {})  # measure again
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    assert Path(stored.user_attrs["winner_test_acc"]["ckpt"]) == tested


def test_two_workers_share_one_study_each_trial_once(tmp_path):
    path = write_study(tmp_path / "rep.yaml", repeat={"seeds": [0, 1, 2]})
    study_dir = tmp_path / "rep"
    done = cli(str(path), "--dir", str(study_dir), "--workers", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    finished = trials(study_dir, "rep")
    assert [t.state for t in finished] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(t.params["seed"] for t in finished) == [0, 1, 2]
    runs = {t.user_attrs["run_dir"] for t in finished}
    assert len(runs) == 3 and sorted(p.name for p in (study_dir / "lightning_logs").iterdir()) == [
        "version_0", "version_1", "version_2"]
    for t in finished:
        run = Path(t.user_attrs["run_dir"])
        assert t.value == pytest.approx(scalars(run)["final/test_acc"][-1])
        assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == t.params["seed"]
    table = (study_dir / "comparison.md").read_text()
    assert "| (same config) | 3 |" in table and " ± " in table and "]%" in table


def test_killed_mid_trial_resumes_keeping_finished_trials(tmp_path):
    path = write_study(tmp_path / "kill.yaml", repeat={"seeds": [0, 1]}, overrides={"trainer.max_epochs": 8})
    study_dir = tmp_path / "kill"
    args = [sys.executable, "-m", "fashion_cnn.study", str(path), "--dir", str(study_dir), "--heartbeat", "1",
            "--workers", "1"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    second = study_dir / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert second.exists(), "the second trial never saved an epoch"
    first_run = trials(study_dir, "kill")[0]
    assert first_run.state == optuna.trial.TrialState.COMPLETE
    before = tree_digest(Path(first_run.user_attrs["run_dir"]))

    # a worker whose heartbeats stopped reaching the database but which still trains the run: the retry waits
    held = subprocess.Popen([sys.executable, "-c", "import sys, time; from fashion_cnn.claim import RunClaim; "
                             "RunClaim(sys.argv[1]).acquire(); print(flush=True); time.sleep(600)",
                             str(second.parent.parent)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        held.stdout.readline()  # the claim is taken
        run_before = tree_digest(second.parent.parent)
        refused = cli(str(path), "--dir", str(study_dir), "--heartbeat", "1")
        assert refused.returncode == 1 and f"version_1 is being trained by pid {held.pid}" in refused.stderr
        assert tree_digest(second.parent.parent) == run_before  # nothing written beside it
    finally:
        held.kill()
        held.wait()
    again = cli(str(path), "--dir", str(study_dir), "--heartbeat", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continues from" in again.stdout and "version_1/checkpoints/last.ckpt" in again.stdout
    finished = [t for t in trials(study_dir, "kill") if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in finished) == [0, 1]  # the first kept, the second completed once
    assert tree_digest(Path(first_run.user_attrs["run_dir"])) == before  # not rerun
    assert sorted(p.name for p in (study_dir / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert len(scalars(study_dir / "lightning_logs" / "version_1")["test/acc"]) == 8  # each epoch logged once


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_study_stopped_mid_trial_says_so_in_one_line_and_resumes_it(tmp_path, sig, status):
    path = write_study(tmp_path / "stop.yaml", base="seed", repeat={"seeds": [0]},
                       overrides={"trainer.max_epochs": 12})
    study_dir = tmp_path / "stop"
    # Ctrl-C's default given back: a shell starts background jobs with SIGINT ignored, and Python keeps that
    proc = subprocess.Popen([sys.executable, "-m", "fashion_cnn.study", str(path), "--dir", str(study_dir),
                             "--workers", "1"], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = signal_in_epoch_3(proc, sig)
    assert proc.returncode == status, "".join(output)
    said = [line for line in output if line.startswith("python -m fashion_cnn.study: stopped")]
    assert len(said) == 1 and "run the same command again" in said[0]
    assert "Traceback" not in "".join(output) and "failed" not in "".join(output)
    # fit's own line names the trial's last.ckpt, and the study's way on, not fit's --ckpt_path
    fit_said = [line for line in output if line.startswith("python -m fashion_cnn.fit: ")]
    assert len(fit_said) == 1 and fit_said[0].rstrip().endswith(f"is intact: {study.AGAIN}"), fit_said
    again = cli(str(path), "--dir", str(study_dir), "--workers", "1")  # the same command again
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continues from" in again.stdout
    finished = [t for t in trials(study_dir, "stop") if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.params["seed"] for t in finished] == [0]
    assert len(scalars(study_dir / "lightning_logs" / "version_0")["test/acc"]) == 12  # each epoch logged once


def test_sigterm_to_a_study_alone_stops_its_workers_too(tmp_path):
    # as a container's PID 1 gets it, or `kill <pid>`: the workers would otherwise train on in the background
    path = write_study(tmp_path / "term.yaml", base="seed", repeat={"seeds": [0, 1]},
                       overrides={"trainer.max_epochs": 12})
    study_dir = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "fashion_cnn.study", str(path), "--dir", str(study_dir),
                             "--workers", "2"], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = "".join(signal_in_epoch_3(proc, signal.SIGTERM))
    assert proc.returncode == 143 and "Traceback" not in output, output[-3000:]
    assert output.count("python -m fashion_cnn.study: stopped; run the same command again") >= 1, output[-3000:]
    assert not [t for t in trials(study_dir, "term") if t.state == optuna.trial.TrialState.COMPLETE]


def test_a_pruned_trial_stops_early_and_is_left_out_of_the_table(tmp_path, capsys):
    path = write_study(tmp_path / "prune.yaml", overrides={"trainer.max_epochs": 3}, search={
        "trials": 4, "val_size": 100, "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "space": {"model.lr": {"low": 0.0001, "high": 0.3, "log": True}}})
    study_dir = tmp_path / "prune"
    study_dir.mkdir()
    storage = storage_module.open_storage(f"sqlite:///{study_dir / 'study.db'}", 10)
    created = study.open_study(study_file.load(path), storage)
    # A fixed order: a poor trial, a good one, then two poor ones the median pruner stops after their first epoch.
    for lr in (0.0001, 0.1, 0.0001, 0.0002):
        created.enqueue_trial({"model.lr": lr})
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    states = [t.state for t in trials(study_dir, "prune")]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and len(states) == 4
    pruned = next(t for t in trials(study_dir, "prune") if t.state == optuna.trial.TrialState.PRUNED)
    assert len(scalars(Path(pruned.user_attrs["run_dir"]))["val/acc"]) < 3
    assert "pruned run(s) not in the table" in capsys.readouterr().out


def test_a_repeat_on_a_validation_split_reports_each_seeds_validation_accuracy(tmp_path, capsys):
    path = write_study(tmp_path / "val_repeats.yaml", repeat={"seeds": [0, 1]},
                       overrides={"data.val_size": 100, "data.test": False})
    assert study.main([str(path), "--dir", str(tmp_path / "val"), "--workers", "1"]) == 0
    done = trials(tmp_path / "val", "val_repeats")
    assert [t.state for t in done] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in done] == [t.user_attrs["best/val/acc"] for t in done]
    assert all("final/test_acc" not in t.user_attrs for t in done)
    out = capsys.readouterr().out
    assert "| (same config) | 2 | not measured (selection on val) |" in out
    # A study directory moved elsewhere (its database holds absolute paths) is compared with its own runs.
    (tmp_path / "val").rename(tmp_path / "moved")
    from fashion_cnn import compare

    assert compare.main([str(tmp_path / "moved"), "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "comparison.json").read_text())
    assert sorted(Path(r["run"]).parent.parent.name for r in runs) == ["moved", "moved"]


def test_compare_any_runs(trained_run, tmp_path, capsys):
    from fashion_cnn import compare

    assert compare.main([str(trained_run), str(trained_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| (same config) | 1 |" in out and (tmp_path / "comparison.md").is_file()
    runs = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["run"] for r in runs] == [str(trained_run)] and runs[0]["test_acc"] > 0  # named twice, counted once
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert compare.main([str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no runs" in err


def test_compare_leaves_out_a_run_that_stopped_before_its_final_test(tmp_path, capsys, monkeypatch):
    from fashion_cnn import compare

    monkeypatch.chdir(tmp_path)
    assert fit.main([*SMALL, "--trainer.max_epochs", "1"]) == 0
    # its loss becomes NaN: having trained, the run stays, but it never reaches its final test
    assert fit.main([*SMALL, "--trainer.max_epochs", "2", "--model.lr", "1e6"]) == 1
    capsys.readouterr()
    assert compare.main(["lightning_logs", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| (same config) | 1 |" in out and "1 unfinished or pruned run(s) not in the table." in out
    assert "not measured" not in out
    assert compare.main(["lightning_logs/version_1", "--out", str(tmp_path / "none")]) == 1  # the unfinished one
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished runs in lightning_logs/version_1 (1 unfinished or pruned)" in err
    assert not (tmp_path / "none").exists()


def test_compare_gives_each_groups_gain_over_a_baseline_paired_by_seed():
    from fashion_cnn.compare import Run, table

    def runs(accs: dict[int, float], **config) -> list[Run]:
        return [Run(Path(f"/{config}/{seed}"), {"seed_everything": seed, **config}, acc, None, 10.0)
                for seed, acc in accs.items()]

    base = runs({0: 0.90, 1: 0.92, 2: 0.91}, **{"data.erase": 0.0})
    erase = runs({0: 0.91, 1: 0.925, 2: 0.92, 3: 0.5}, **{"data.erase": 0.5})  # seed 3 has no partner
    lines = table([*base, *erase], base).splitlines()
    assert lines[0].endswith("| gain over the baseline (paired by seed) |")
    rows = {line.split(" | ")[0]: line for line in lines[2:]}
    assert rows["| data.erase=0"].endswith("| (the baseline) |")
    # differences 1.0, 0.5, 1.0: t = 0.833 / (0.289 / sqrt(3)) = 5.0 with 2 degrees of freedom
    assert rows["| data.erase=0.5"].endswith("| +0.83 ± 0.29 (3 seeds, p = 0.019) |")


def test_the_t_distributions_tail_matches_its_table_and_its_integral():
    from fashion_cnn.compare import T95, t_sf

    for df, t95 in enumerate(T95, start=1):  # the two-sided 95% points leave 2.5% in each tail
        assert t_sf(t95, df) == pytest.approx(0.025, abs=1e-4) and t_sf(-t95, df) == pytest.approx(0.975, abs=1e-4)
    assert t_sf(0.0, 5) == t_sf(0.0, 4) == 0.5
    # P(T > 1) with 6 degrees of freedom and P(T > 2) with 10, by numerical integration of the density elsewhere
    assert t_sf(1.0, 6) == pytest.approx(0.177959, abs=1e-6) and t_sf(2.0, 10) == pytest.approx(0.036694, abs=1e-6)


def test_a_paired_gain_compares_like_with_like_and_counts_each_run_once(trained_run, mirror_run, tmp_path):
    from fashion_cnn.compare import Run, paired_gain, report

    tested = [Run(Path(f"/t{seed}"), {"seed_everything": seed}, 0.9, 0.8, 1.0) for seed in (0, 1)]
    val_only = [Run(Path(f"/v{seed}"), {"seed_everything": seed}, None, 0.85, 1.0) for seed in (0, 1)]
    # val against val, not test (0.9) against val; a loss on every seed alike: p = 1
    assert paired_gain(tested, val_only) == "-5.00 ± 0.00 (2 seeds, p = 1.000)"
    assert paired_gain(tested, [Run(Path("/x"), {"seed_everything": 0}, None, None, 1.0)]) == "no common metric"
    # the baseline named again as a target: each of its runs once
    text = report([trained_run, trained_run], tmp_path / "once", baseline=[trained_run])
    assert "| (same config) | 1 |" in text
    assert len(json.loads((tmp_path / "once" / "comparison.json").read_text())) == 1
    # a baseline given as several paths (one config's seeds run as two studies): one group, each run once
    again = tmp_path / "again"
    again.mkdir()
    (again / "version_0").symlink_to(trained_run)
    text = report([trained_run], tmp_path / "twice", baseline=[trained_run, again])
    assert "| (same config) | 1 |" in text and "(the baseline)" in text
    with pytest.raises(commands.CommandError, match="its runs have different configs"):
        report([trained_run], tmp_path / "two", baseline=[trained_run, mirror_run])
    copied = tmp_path / "copied"  # the same seed's run twice (a copy, not a link): which to pair with is ambiguous
    shutil.copytree(trained_run, copied / "version_0")
    with pytest.raises(commands.CommandError, match="seed 0 ran more than once"):
        report([trained_run], tmp_path / "dup", baseline=[trained_run, copied])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "version_0").symlink_to(trained_run)
    (mixed / "version_1").symlink_to(mirror_run)
    with pytest.raises(commands.CommandError, match="its runs have different configs"):
        report([trained_run], tmp_path / "no", baseline=[mixed])
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(("config", "message"), [
    ("trainer: [not, a, mapping]\n", "not a fit config"),
    ("model: hello\n", "not a fit config"),
    ("model: [\n", "config.yaml cannot be read"),  # damaged: not YAML at all
    (b"\xff\xfe", "config.yaml cannot be read"),
    (None, "no such run directory"),
])
def test_a_run_dir_whose_config_is_not_a_fit_config_is_one_line(tmp_path, capsys, config, message):
    from fashion_cnn import compare

    run = tmp_path / "version_0"
    if config is not None:
        run.mkdir()
        write = (run / "config.yaml").write_bytes if isinstance(config, bytes) else (run / "config.yaml").write_text
        write(config)
    before = tree_digest(tmp_path)
    assert compare.main([str(run), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert tree_digest(tmp_path) == before


def test_runs_that_differ_by_a_callback_are_told_apart_by_it():
    from fashion_cnn.compare import Run, callback_keys, differing_keys

    common = [{"class_path": "fashion_cnn.callbacks.EpochSummary"}]
    ema = {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.99}}
    plain, averaged = callback_keys(common), callback_keys([*common, ema])
    assert averaged == {"trainer.callbacks.EpochSummary": "", "trainer.callbacks.EMAWeightAveraging": "decay=0.99"}
    runs = [Run(Path(f"/{i}"), config, 0.9, None, 1.0) for i, config in enumerate((plain, averaged))]
    assert differing_keys(runs) == ["trainer.callbacks.EMAWeightAveraging"]


def test_single_runs_that_differ_by_a_value_of_mixed_types_are_plotted_as_text():
    from fashion_cnn.compare import Run, figure

    # seed.yaml's precision is null, fast's "32-true"; a callback only one run has is missing (None) in the other
    configs = [{"trainer.precision": None, "model.lr": 0.01}, {"trainer.precision": "32-true", "model.lr": 0.1},
               {"trainer.precision": True, "model.lr": 1}]
    runs = [Run(Path(f"/{i}"), config, None, 0.8 + i / 100, 1.0) for i, config in enumerate(configs)]
    fig = figure(runs)
    lr, precision = fig.axes  # in the order of their keys
    assert [t.get_text() for t in precision.get_xticklabels()] == ["None", "32-true", "True"]
    assert lr.get_xscale() == "log"  # numbers stay numbers


def test_compare_writes_where_asked_or_says_in_one_line_why_not(trained_run, tmp_path, capsys):
    from fashion_cnn import compare

    assert compare.main([str(trained_run), "--out", str(tmp_path / "new" / "dir")]) == 0
    assert (tmp_path / "new" / "dir" / "comparison.md").is_file()
    (tmp_path / "a_file").write_text("keep")
    capsys.readouterr()
    assert compare.main([str(trained_run), "--out", str(tmp_path / "a_file")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to" in err and "--out" in err
    assert (tmp_path / "a_file").read_text() == "keep"
    assert compare.main([str(trained_run), "--baseline", str(tmp_path / "nothing")]) == 1
    assert "no runs" in capsys.readouterr().err


def test_frontier_reads_each_epoch_of_a_repeat_study(tmp_path, capsys, monkeypatch):
    from benchmarks import frontier

    path = write_study(tmp_path / "fast_repeats.yaml", repeat={"seeds": [0, 1]}, overrides={"trainer.max_epochs": 2})
    study_dir = tmp_path / "fast_repeats"
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    curves = frontier.trial_curves(study_dir)
    assert len(curves) == 2 and all(len(c.points) == 2 and 0 < c.points[0][0] < c.points[1][0] < c.wall_s
                                    for c in curves)
    finals = sorted(t.value for t in trials(study_dir, "fast_repeats"))
    assert sorted(c.points[-1][1] for c in curves) == pytest.approx(finals)  # the last epoch is what the study reports
    assert sorted(c.final for c in curves) == pytest.approx(finals)  # and so is the final test (of the last epoch)
    assert frontier.first_reached(frontier.Trial([(5.0, 0.80), (9.0, 0.91)]), 0.90) == 9.0
    assert frontier.first_reached(frontier.Trial([(5.0, 0.80)]), 0.90) is None

    out = tmp_path / "frontier.json"
    assert frontier.main([str(study_dir), "--bench", str(tmp_path / "none.json"), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 88.5% | none yet | not reached | - |" in table and "| `fast` | 2 |" in table
    last_epoch = json.loads(out.read_text())["last_epoch"]["fast"]
    assert last_epoch["acc"] == [c.points[-1][1] for c in curves]
    assert last_epoch["final_acc"] == [c.final for c in curves]
    # its training FLOPs, from the runs' own config.yaml: fast's network (2,595,000 FLOPs an image forward and
    # backward, tests/test_flops.py) on 2 epochs of the 60,000 images FashionMNIST trains on (not the fixture's)
    assert all(c.config is not None and c.config.name == "config.yaml" for c in curves)
    assert last_epoch["training_flops"] == 2 * 60_000 * 2_595_000
    strong = json.loads(out.read_text())["reference_training_flops"]
    assert f"| 0.31 | {100 * 2 * 60_000 * 2_595_000 / strong:.1f}% |" in table.splitlines()[-1]

    monkeypatch.setattr(frontier, "full_threads", lambda: 64)  # trials with fewer threads than that are left out
    with pytest.raises(SystemExit, match="no finished trial run with 64 threads"):
        frontier.main([str(study_dir)])


def test_a_trial_refused_for_its_inputs_is_one_line_and_runs_once_they_are_fixed(tmp_path, capsys, no_other_copies):
    copy = tmp_path / "copy"  # not there yet: the first trial finds no dataset
    path = write_study(tmp_path / "inputs.yaml", repeat={"seeds": [0, 1]}, overrides={"data.data_dir": str(copy)})
    study_dir = tmp_path / "inputs"
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed" not in err
    said = [line for line in err.splitlines() if "error:" in line]
    assert len(said) == 1 and "FashionMNIST not found" in said[0]
    shutil.copytree(FIXTURE, copy)
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    finished = [t for t in trials(study_dir, "inputs") if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in finished) == [0, 1]  # the refused seed too, not only the next one


@pytest.mark.parametrize(("error", "message", "kept"), [
    (study.Stopped(130), "Trial 0 failed with parameters: {'seed': 0} because of the following error: ...", False),
    (DataError("FashionMNIST not found"), "Trial 0 failed with parameters: {} because of ...", False),
    (ValueError("a bug"), "Trial 0 failed with parameters: {} because of ...", True),  # a bug keeps its traceback
    (None, "Trial 0 failed with value None.", False),  # what Optuna adds after a stopped trial's None
    (None, "Trial 1 finished with value: 0.9 and parameters: {'seed': 1}.", True),
])
def test_optunas_trial_log_leaves_out_only_what_the_study_says_in_one_line(error, message, kept):
    exc_info = (type(error), error, None) if error is not None else None
    record = logging.LogRecord("optuna.study._optimize", logging.WARNING, __file__, 1, message, None, exc_info)
    assert study._said_elsewhere(record) is kept


def patch_sleep(monkeypatch, fake) -> None:
    """Replace ``time.sleep`` (the study's waits) by ``fake`` in the test's own thread only: the patch is
    process-wide, and other threads (Optuna's heartbeat, say) keep the real one."""
    real, caller = time.sleep, threading.current_thread()
    monkeypatch.setattr(study.time, "sleep", lambda s: fake(s) if threading.current_thread() is caller else real(s))


def test_a_worker_left_waiting_on_a_journal_storage_says_why_it_may_never_end(tmp_path, capsys, monkeypatch):
    path = write_study(tmp_path / "journal.yaml", repeat={"seeds": [0]})
    url = f"journal:{tmp_path / 'journal.log'}"
    created = study.open_study(study_file.load(path), storage_module.open_storage(url, 10))
    created.ask()  # seed 0 taken by a worker that then died: "running" for good, as journal storage cannot tell

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt  # the user's Ctrl-C, the only way out of this wait

    patch_sleep(monkeypatch, stop)
    assert study.main([str(path), "--dir", str(tmp_path / "out"), "--storage", url, "--workers", "1"]) == 130
    said = capsys.readouterr().err.splitlines()
    assert said[-2].startswith("python -m fashion_cnn.study: waiting for trial(s) 0, running in other processes")
    assert "no heartbeats" in said[-2] and said[-1] == "python -m fashion_cnn.study: interrupted"


def test_a_study_on_a_journal_file_runs_to_its_table_and_compare_reads_it(tmp_path, capsys):
    # the shared-filesystem setup of docs/studies.md: its report read the journal as if it were a database URL
    path = write_study(tmp_path / "journal.yaml", repeat={"seeds": [0, 1]})
    study_dir = tmp_path / "shared"
    study_dir.mkdir()
    url = f"journal:{study_dir / 'journal.log'}"
    assert study.main([str(path), "--dir", str(study_dir), "--storage", url, "--workers", "1"]) == 0
    assert "| (same config) | 2 |" in capsys.readouterr().out and not (study_dir / "study.db").exists()
    assert compare.main([str(study_dir), "--storage", url, "--out", str(tmp_path / "cmp")]) == 0
    assert "| (same config) | 2 |" in capsys.readouterr().out
    assert compare.main([str(study_dir), "--storage", f"journal:{tmp_path}/nowhere/j.log"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the storage journal:" in err and "make it first" in err
    # the storage is the study's: a run directory given is read as that run, and two targets are a usage error
    run_dir = study_dir / "lightning_logs" / "version_0"
    assert compare.main([str(run_dir), "--storage", url, "--out", str(tmp_path / "one")]) == 0
    assert "| (same config) | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        compare.main([str(study_dir), str(run_dir), "--storage", url])
    assert usage.value.code == 2 and "--storage is one study's storage" in capsys.readouterr().err


def test_a_worker_waiting_for_the_last_trial_ends_within_a_second_of_it_not_a_heartbeat(tmp_path, monkeypatch):
    spec = study_file.load(write_study(tmp_path / "wait.yaml", repeat={"seeds": [0]}))
    created = study.open_study(spec, storage_module.open_storage(f"sqlite:///{tmp_path / 'study.db'}", 10))
    elsewhere = created.ask()  # seed 0, running in another worker
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        created.tell(elsewhere, 0.9)  # ... which finishes while this worker waits

    patch_sleep(monkeypatch, sleep)
    study.work(spec, created, tmp_path, heartbeat=10)
    assert slept == [study.WAIT_POLL_S] and study.WAIT_POLL_S <= 1


@pytest.mark.parametrize(("space", "first", "then", "said", "checked"), [
    # a learning rate that diverges at once, then one that learns
    ({"model.lr": {"low": 0.01, "high": 1e6, "log": True}}, {"model.lr": 1e6}, {"model.lr": 0.05},
     ("diverged", "training loss became"), True),
    # both ends of the space run (erase 0 without augmentation, erase 0.5 with it); a mix in between does not
    ({"data.erase": {"low": 0.0, "high": 0.5}, "data.augment": {"choices": [False, True]}},
     {"data.erase": 0.3, "data.augment": False}, {"data.erase": 0.3, "data.augment": True},
     ("refused", "data.erase=0.3 does nothing without augmentation"), True),
    # a choice fit cannot parse, as if its base config had been edited after the study checked the space
    ({"model.schedule": {"choices": ["constant", "cosine"]}}, {"model.schedule": "cosine"},
     {"model.schedule": "constant"}, ("refused", 'Parser key "model.schedule"'), False),
])
def test_a_search_trial_that_fails_for_its_values_is_recorded_and_the_search_goes_on(tmp_path, capsys, monkeypatch,
                                                                                     space, first, then, said, checked):
    if not checked:  # the file as it was when the study checked it
        monkeypatch.setattr(study_file, "check_fit_args", lambda spec, bad: None)
    path = write_study(tmp_path / "fails.yaml", base="seed", search={
        "trials": 2, "val_size": 100, "pruner": "none", "space": space})
    study_dir = tmp_path / "fails"
    study_dir.mkdir()
    url = f"sqlite:///{study_dir / 'study.db'}"
    created = study.open_study(study_file.load(path), storage_module.open_storage(url, 10))
    for params in (first, then):
        created.enqueue_trial(params)
    assert study.main([str(path), "--dir", str(study_dir), "--workers", "1"]) == 0
    failed, completed = trials(study_dir, "fails")  # the failed one is not queued again: the search is not stuck on it
    what, why = said
    assert failed.state == optuna.trial.TrialState.FAIL and why in failed.user_attrs[what]
    assert completed.state == optuna.trial.TrialState.COMPLETE
    captured = capsys.readouterr()
    assert f"trial 0 {what}: {why}" in captured.out and "Traceback" not in captured.out + captured.err


def test_a_comment_in_the_base_config_does_not_make_another_study(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  lr: 0.1\n")
    spec = write_study(tmp_path / "s.yaml", base="base.yaml", repeat={"seeds": [0]})
    before = study_file.load(spec).definition()
    base.write_text("# a note about this recipe\nmodel:\n  lr: 0.1  # why 0.1\n")
    assert study_file.load(spec).definition() == before
    base.write_text("model:\n  lr: 0.2\n")
    assert study_file.load(spec).definition() != before


def test_a_base_value_the_overrides_replace_does_not_make_another_study(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  lr: 0.1\ndata:\n  erase: 0.5\n")
    path = write_study(tmp_path / "s.yaml", base="base.yaml", overrides={"data.erase": 0.0}, repeat={"seeds": [0]})
    storage = storage_module.open_storage(f"sqlite:///{tmp_path / 'study.db'}", 10)
    study.open_study(study_file.load(path), storage)
    base.write_text("model:\n  lr: 0.1\ndata:\n  erase: 0.25\n")  # pinned by the overrides: the same runs
    study.open_study(study_file.load(path), storage)
    base.write_text("model:\n  lr: 0.2\ndata:\n  erase: 0.25\n")  # not pinned: other runs
    with pytest.raises(study.StudyError, match="already used by a study with another config"):
        study.open_study(study_file.load(path), storage)


def test_a_bfloat16_study_is_continued_only_where_its_trials_would_train_alike(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  precision: bf16-mixed\n  accelerator: cpu\n")
    path = write_study(tmp_path / "s.yaml", base="base.yaml", repeat={"seeds": [0]})
    storage = storage_module.open_storage(f"sqlite:///{tmp_path / 'study.db'}", 10)
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: True)
    assert study.open_study(study_file.load(path), storage).user_attrs[study.PRECISION] == "bf16-mixed"
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: False)  # another machine, where fit falls back to float32
    with pytest.raises(study.StudyError, match="trains its trials in bf16-mixed, and this machine would train them "
                                               "in 32-true"):
        study.open_study(study_file.load(path), storage)
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: True)
    assert study.open_study(study_file.load(path), storage).user_attrs[study.PRECISION] == "bf16-mixed"
    # a float32 study is the same study on either machine
    plain = write_study(tmp_path / "p.yaml", base="fast", overrides={"trainer.precision": "32-true"},
                        repeat={"seeds": [0]})
    study.open_study(study_file.load(plain), storage)
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: False)
    assert study.open_study(study_file.load(plain), storage).user_attrs[study.PRECISION] == "32-true"


def test_overrides_go_into_the_base_values_key_by_key():
    base = {"model": {"lr": 0.1, "net": {"class_path": "N", "init_args": {"widths": [1, 2], "dropout": 0.5}}}}
    merged = study_file.with_overrides(base, {"model.net.init_args.dropout": 0.0, "model": {"lr": 0.2}, "data.x": 1})
    assert merged == {"model": {"lr": 0.2, "net": {"class_path": "N", "init_args": {"widths": [1, 2], "dropout": 0.0}}},
                      "data": {"x": 1}}
    assert base["model"]["lr"] == 0.1  # a copy


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "studies").rglob("*.yaml")))
def test_every_shipped_study_file_is_valid(path):
    # each is checked as `make study` would check it before any training: its base, overrides and fit arguments
    spec = study_file.load(REPO / path)
    assert spec.seeds or spec.space


def test_a_server_storage_never_shows_its_password_and_names_a_missing_driver(tmp_path, capsys, monkeypatch):
    repeat = write_study(tmp_path / "r.yaml", base="seed", overrides=ON_FIXTURE, repeat={"seeds": [0]})
    unreachable = "postgresql://optuna:S3cretPass@127.0.0.1:1/none"  # port 1: refused at once
    assert study.main([str(repeat), "--storage", unreachable, "--dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the storage postgresql://optuna:***@127.0.0.1:1/none" in err
    assert "S3cretPass" not in err
    monkeypatch.setenv(storage_module.STORAGE_ENV, unreachable)  # the URL kept off the command line
    assert study.main([str(repeat), "--dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "postgresql://optuna:***@127.0.0.1:1/none" in err and "S3cretPass" not in err
    assert not (tmp_path / "s").exists()  # its runs would go there: nothing is made before the storage answers
    monkeypatch.setenv(storage_module.STORAGE_ENV, "mysql://optuna:S3cretPass@127.0.0.1/none")  # no driver here
    assert study.main([str(repeat), "--dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its database driver, MySQLdb, is not installed" in err
    assert "S3cretPass" not in err

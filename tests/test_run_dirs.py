"""Runs started at the same moment in one lightning_logs/ each get their own version_N directory."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import torch

from fashion_cnn.runs import reserve_run_dir
from tests.helpers import SMALL


def _reserve(log_root: Path, barrier, results) -> None:
    barrier.wait()  # all at once: the moment two listings of the directory would agree
    results.put(reserve_run_dir(log_root).name)


def test_processes_reserving_at_once_never_share_a_directory(tmp_path):
    n = 8
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_reserve, args=(tmp_path / "lightning_logs", barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    names = sorted(results.get(timeout=5) for _ in range(n))
    assert names == sorted(f"version_{i}" for i in range(n))


def test_a_reservation_skips_past_existing_runs(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_7").mkdir()
    (tmp_path / "notes").mkdir()
    assert reserve_run_dir(tmp_path).name == "version_8"


def test_fits_started_together_each_write_their_own_run(tmp_path):
    cmd = [sys.executable, "-m", "fashion_cnn.fit", *SMALL, "--trainer.max_epochs", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1", "version_2"]
    writers = set()
    for run in runs:  # each a whole run: its config, its checkpoints, event files of one process
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        pids = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}  # ....<host>.<pid>.<n>
        assert len(pids) == 1
        writers |= pids
    assert len(writers) == 3


def test_a_run_that_fails_before_starting_leaves_no_directory(no_other_copies, tmp_path, monkeypatch):
    from fashion_cnn import fit

    monkeypatch.chdir(tmp_path)
    failing = [*SMALL, "--data.data_dir", str(tmp_path / "nowhere"), "--data.download", "false"]
    assert fit.main(failing) == 1
    assert not (tmp_path / "lightning_logs").exists()
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run's directory stays as it was
    assert fit.main(failing) == 1
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_directory(tmp_path, monkeypatch, capsys):
    from fashion_cnn import fit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run's directory stays as it was
    # the fixture is a cut of the release: checked in the data module's setup, after Lightning's logger has written
    # an events file into the new run (which report and compare would otherwise take for a run)
    assert fit.main([*SMALL, "--data.verify", "true"]) == 1
    assert "512 images, expected 60,000" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


def test_a_full_disk_before_the_first_step_leaves_no_directory_either(tmp_path, monkeypatch, capsys):
    import errno

    from fashion_cnn import fit
    from fashion_cnn.datamodule import FashionMNISTDataModule

    def full(self, stage=None):
        raise OSError(errno.ENOSPC, "No space left on device", "somewhere/cache")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FashionMNISTDataModule, "setup", full)  # after Lightning's logger has written its events
    assert fit.main(SMALL) == 1
    assert "no space left on the device while writing somewhere/cache" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


def test_a_run_being_trained_is_refused_to_a_second_process_until_its_trainer_dies(tmp_path):
    cmd = [sys.executable, "-m", "fashion_cnn.fit", *SMALL]
    first = subprocess.Popen([*cmd, "--trainer.max_epochs", "10000"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # its first epoch's line: last.ckpt is written at the end of that epoch
            if line.startswith("[2] "):
                break
        last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        second = subprocess.run([*cmd, "--trainer.max_epochs", "10000", "--ckpt_path", str(last)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        errors = [line for line in second.stderr.splitlines() if "error" in line or "Traceback" in line]
        assert second.returncode == 1 and len(errors) == 1, second.stderr
        assert (f"version_0 is being trained by pid {first.pid} on {socket.gethostname()}, since "
                in second.stderr and f"kill {first.pid}" in second.stderr)
        assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    finally:
        first.kill()  # kill -9: no chance to release its claim
        first.wait()
    epochs = torch.load(last, weights_only=True)["epoch"] + 1
    third = subprocess.run([*cmd, "--trainer.max_epochs", str(epochs + 1), "--ckpt_path", "last"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr  # the dead holder's claim counts for nothing
    assert torch.load(last, weights_only=True)["epoch"] + 1 == epochs + 1

"""Kill a real training process mid-epoch, resume it with one command, and get the uninterrupted run's numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import FIXTURE, scalars

EPOCHS = 5
ARGS = ["--data.data_dir", str(FIXTURE), "--data.verify", "false", "--data.download", "false",
        "--data.batch_size", "16", "--trainer.max_epochs", str(EPOCHS), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "8"]


def fit(cwd: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fashion_cnn.fit", *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def per_epoch(run: Path) -> tuple[list[float], list[float]]:
    logged = scalars(run)
    return logged["test/acc"], logged["test/loss"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    assert fit(straight).wait(timeout=300) == 0

    proc = fit(broken)
    # Wait for epoch 2's summary line, then kill at once: the process is inside epoch 3.
    for line in proc.stdout:
        if line.startswith("[2] "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run = broken / "lightning_logs" / "version_0"
    saved_epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert saved_epoch < EPOCHS - 1  # it really was interrupted before the end

    config = (run / "config.yaml").read_bytes()
    resumed = fit(broken, "--ckpt_path", "last")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert not (broken / "lightning_logs" / "version_1").exists()  # the same run continued
    assert (run / "config.yaml").read_bytes() == config  # still the config that reruns it from the start

    want = torch.load(straight / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["epoch"] == want["epoch"]
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    acc, loss = per_epoch(straight / "lightning_logs" / "version_0")
    got_acc, got_loss = per_epoch(run)
    assert len(acc) == EPOCHS and got_acc == acc and got_loss == loss


def test_resume_with_no_run_or_a_bad_checkpoint_is_one_line(tmp_path):
    proc = fit(tmp_path, "--ckpt_path", "last")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "error: no run in lightning_logs/" in out and "Traceback" not in out
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = fit(tmp_path, "--ckpt_path", str(bad))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "truncated or not a PyTorch checkpoint" in out and "Traceback" not in out
    assert not (tmp_path / "lightning_logs").exists()

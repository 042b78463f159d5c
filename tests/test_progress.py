"""The progress bar in a batch log and at a terminal: into a file or a pipe, no redraws but the per-epoch lines and,
inside a long epoch, a timed progress line; at a terminal, Lightning's TQDM bar as it draws on its own."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import sys
import termios
import threading
from pathlib import Path

import lightning as L
import pytest

from fashion_cnn import fit
from fashion_cnn.callbacks import BatchLogProgressBar
from fashion_cnn.module import FashionClassifier
from tests.helpers import FIXTURE

# the fixture (8 training batches of 64, 2 test batches of 250) with the progress bar on
ARGS = ["--data.data_dir", str(FIXTURE), "--data.verify", "false", "--data.download", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "4", "--trainer.max_epochs", "2"]
TRAIN_LINE = re.compile(r"^\[(\d)\] Training (\d)/8 \((\d+)%\), \d+ s, [\d.]+ (?:it/s|s/it)", re.MULTILINE)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bar_config(path: Path, bar: str, **init_args: float) -> str:
    """A config file whose callbacks are only the epoch line and ``bar`` (a class path): no pictures to draw."""
    args = ", ".join(f"{k}: {v}" for k, v in init_args.items())
    path.write_text("trainer:\n  callbacks:\n    - class_path: fashion_cnn.callbacks.EpochSummary\n"
                    f"    - class_path: {bar}\n      init_args: {{{args}}}\n")
    return str(path)


def test_a_batch_log_has_the_epoch_lines_and_no_redraws(workdir, capsys):
    assert fit.main(ARGS) == 0  # seed.yaml's bar, its 60 s interval: this short run prints no progress line
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "\x1b[" not in out + err  # no carriage return, no cursor movement
    assert re.findall(r"^\[(\d)\] Test loss", out, re.MULTILINE) == ["1", "2"]
    assert "Training" not in out and "Epoch 0" not in out and "Testing DataLoader" not in out
    config = (workdir / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "class_path: fashion_cnn.callbacks.BatchLogProgressBar" in config


def test_a_small_interval_prints_a_progress_line_after_each_batch(workdir, capsys):
    config = bar_config(workdir / "bar.yaml", "fashion_cnn.callbacks.BatchLogProgressBar", interval=1e-9)
    assert fit.main(["--config", config, *ARGS]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "\x1b[" not in out + err
    lines = out.splitlines()
    train = [(int(e), int(n), int(p)) for e, n, p in TRAIN_LINE.findall(out)]
    assert train == [(e, n, round(100 * n / 8)) for e in (1, 2) for n in range(1, 9)]
    # each epoch's evaluation, then its summary line; the final test of the reported checkpoint on its own
    for epoch in (1, 2):
        summary = next(i for i, line in enumerate(lines) if line.startswith(f"[{epoch}] Test loss"))
        assert lines[summary - 2].startswith(f"[{epoch}] Validation 1/2 (50%), ")
        assert lines[summary - 1].startswith(f"[{epoch}] Validation 2/2 (100%), ")
    assert [line.split(",")[0] for line in lines if line.startswith("Testing")] == ["Testing 1/2 (50%)",
                                                                                   "Testing 2/2 (100%)"]


@pytest.mark.parametrize(("option", "refresh_rate"), [(["--trainer.enable_progress_bar", "false"], 1), ([], 0)],
                         ids=["enable_progress_bar false", "refresh_rate 0"])
def test_no_progress_without_a_bar_but_the_epoch_lines(workdir, capsys, option, refresh_rate):
    config = bar_config(workdir / "bar.yaml", "fashion_cnn.callbacks.BatchLogProgressBar", interval=1e-9,
                        refresh_rate=refresh_rate)
    assert fit.main(["--config", config, *ARGS, *option]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert "Training" not in out and "Validation" not in out and "Testing 1/2" not in out
    assert re.findall(r"^\[(\d)\] Test loss", out, re.MULTILINE) == ["1", "2"]


class FakeClock(L.Callback):
    """Lets 25 s go by with every training batch, on the bar's clock."""

    def __init__(self, bar: BatchLogProgressBar) -> None:
        self.now = 0.0
        bar.clock = lambda: self.now

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.now = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.now = 25.0 * (batch_idx + 1)


def test_progress_lines_are_interval_seconds_apart_at_least(small_dm, capsys):
    bar = BatchLogProgressBar(interval=60)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[FakeClock(bar), bar])
    trainer.fit(FashionClassifier(), datamodule=small_dm)
    lines = capsys.readouterr().out.splitlines()
    # batch n ends at 25 n s: a line at 75 s (batch 3) and at 150 s (batch 6); at 200 s only 50 s have gone by
    assert [line.split(", train/loss")[0] for line in lines if "Training" in line] == [
        "[1] Training 3/8 (38%), 75 s, 25.0 s/it", "[1] Training 6/8 (75%), 150 s, 25.0 s/it"]


def run_at_a_terminal(argv: list[str], monkeypatch) -> str:
    """What ``fit.main(argv)`` shows on a pseudo-terminal of 120 columns that is its stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm sizes the bar to it
    shown = bytearray()

    def read() -> None:  # a pty holds only a few KB: it must be read while the run writes
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(slave, "w", encoding="utf-8", closefd=False) as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        monkeypatch.setattr(sys, "stderr", terminal)
        try:
            assert fit.main(argv) == 0
        finally:
            terminal.flush()
            monkeypatch.undo()
    os.close(slave)
    reader.join(timeout=30)
    os.close(master)
    return shown.decode("utf-8").replace("\r\n", "\n")  # the terminal's own newline translation


BAR_DRAWN = re.compile(r"(Epoch \d|Validation DataLoader 0|Testing DataLoader 0): +\d+%\|[^|]*\| (\d+/\d+)")


def test_at_a_terminal_the_bar_draws_as_lightnings_does(workdir, monkeypatch):
    shown = {}
    for bar in ("lightning.pytorch.callbacks.TQDMProgressBar", "fashion_cnn.callbacks.BatchLogProgressBar"):
        config = bar_config(workdir / "bar.yaml", bar, refresh_rate=2)
        shown[bar] = run_at_a_terminal(["--config", config, *ARGS], monkeypatch)
    ours, lightnings = shown["fashion_cnn.callbacks.BatchLogProgressBar"], shown.pop(
        "lightning.pytorch.callbacks.TQDMProgressBar")
    # the same states drawn, as often; after a line printed through the bars tqdm redraws them in the order of a set
    assert sorted(BAR_DRAWN.findall(ours)) == sorted(BAR_DRAWN.findall(lightnings))
    assert ("Epoch 1", "8/8") in BAR_DRAWN.findall(ours) and ("Epoch 0", "4/8") in BAR_DRAWN.findall(ours)
    assert ours.count("\r") == lightnings.count("\r") > 20
    assert "Training 1/8" not in ours  # no progress lines at a terminal
    for text in (ours, lightnings):  # printed through the bar (tqdm.write), once each
        assert re.findall(r"\[(\d)\] Test loss", text) == ["1", "2"]


def test_print_writes_a_line_in_a_file(capsys):
    bar = BatchLogProgressBar()
    bar.at_terminal = False
    bar.print("[1] Test loss", "0.5", end="\n")
    assert capsys.readouterr().out == "[1] Test loss 0.5\n"

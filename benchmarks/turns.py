"""The protocol between bench.py and its workers, one process per variant.

Worker side: with ``BENCH_TURNS=1`` in its environment, a worker prints ``BENCH-READY`` before each epoch and waits
for a line on its stdin (:func:`wait_for_turn`); after each epoch's test it prints one ``BENCH {json}`` line with the
epoch number, its seconds and the test accuracy (:func:`report`). Without ``BENCH_TURNS=1`` it runs straight through.
Driver side: :class:`Worker` starts such a process, lets it go one epoch at a time and times each epoch itself.

Only the standard library is used here: the notebook and floor workers import this module, and Lightning would
add to the peak RSS measured for them. The project's side of the protocol, a Lightning callback, is callback.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TURNS_ENV = "BENCH_TURNS"
READY = "BENCH-READY"
PREFIX = "BENCH "


def wait_for_turn() -> None:
    """With turns on: tell the benchmark this process is ready for its next epoch, then block until it says go.
    Without, return at once."""
    if os.environ.get(TURNS_ENV) != "1":
        return
    print(READY, flush=True)
    if not sys.stdin.readline():
        raise SystemExit("the benchmark went away")


def report(epoch: int, seconds: float, acc: float) -> None:
    """Print one epoch's result, the line :func:`read_report` reads back."""
    print(PREFIX + json.dumps({"epoch": epoch, "seconds": seconds, "acc": acc}), flush=True)


def read_report(line: str) -> dict[str, float] | None:
    """The epoch result a :func:`report` line holds, or None for any other line."""
    return json.loads(line[len(PREFIX):]) if line.startswith(PREFIX) else None


class Worker:
    """One variant's process, seen from the benchmark: its output, its epochs and, once ended, its peak RSS.

    With ``turns`` the process waits before each epoch until :meth:`run_epoch` lets it go, and an epoch's
    ``seconds`` are timed here, from go until the process is ready for the next epoch (or has printed its last).
    Without, the process runs straight through and ``seconds`` are what it reports. Each epoch also records
    ``wall``: seconds since the process was started (imports and data loading included).
    """

    def __init__(self, name: str, cmd: list[str], turns: bool, cwd: Path | None = None) -> None:
        self.name, self.turns = name, turns
        self.lines: list[str] = []
        self.epochs: list[dict[str, float]] = []
        self.peak_rss_gb: float | None = None  # both set by finish()
        self.wall_seconds: float | None = None
        env = os.environ | {TURNS_ENV: "1" if turns else "0"}
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if turns else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.alive = True

    def read(self, go: float | None = None) -> None:
        """Read output until the process is ready for its next turn or has ended, recording its epochs
        (timed from ``go`` when given)."""
        for line in self.proc.stdout:
            now = time.perf_counter()
            if line.strip() == READY:
                if go is not None and self.epochs:
                    self.epochs[-1]["seconds"] = now - go
                return
            self.lines.append(line)
            if (epoch := read_report(line)) is not None:
                epoch["wall"] = now - self.start
                if go is not None:
                    epoch["seconds"] = now - go
                self.epochs.append(epoch)
        self.alive = False

    def run_epoch(self) -> None:
        """Let the waiting process run one epoch; return when it waits again (or has ended)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.read(go=time.perf_counter())

    def finish(self) -> None:
        """Wait for the process to end, then record its ``peak_rss_gb`` (the kernel's count, from ``wait4``) and
        ``wall_seconds``."""
        if self.turns:
            self.proc.stdin.close()
        self.read()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.peak_rss_gb = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
        self.wall_seconds = time.perf_counter() - self.start

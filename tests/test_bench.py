"""The benchmark's turn-taking: workers wait for their turn, epochs are timed by the benchmark, ratios are paired."""

import sys
from pathlib import Path

from benchmarks.bench import Variant, paired_ratio

# A stand-in worker: three "epochs" that sleep 0.1 s each and report a made-up time, waiting for their turn.
WORKER = """
import json, time
from benchmarks.bench import wait_for_turn
for epoch in (1, 2, 3):
    wait_for_turn()
    with open("started.txt", "a") as f:
        f.write(f"{epoch}\\n")
    time.sleep(0.1)
    print("BENCH " + json.dumps({"epoch": epoch, "seconds": 99.0, "acc": 0.5}), flush=True)
"""


def test_workers_wait_for_their_turn_and_the_benchmark_times_each_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.bench.ROOT", tmp_path)  # the worker's working directory
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))  # finds benchmarks/
    started = tmp_path / "started.txt"
    worker = Variant("fake", [sys.executable, "-c", WORKER], turns=True)
    worker.read()  # loads, then waits for its first turn
    assert worker.alive and worker.epochs == [] and not started.exists()
    worker.run_epoch()
    assert started.read_text() == "1\n"  # one epoch ran, and the worker waits again
    worker.run_epoch()
    worker.run_epoch()
    result = worker.result(None)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3] and not worker.alive
    # timed from go to ready (or to the last line), not the 99 s the worker claimed
    assert all(0.1 <= e["seconds"] < 5 for e in result["epochs"])
    assert result["seconds_per_epoch"] < 5 and result["peak_rss_gb"] > 0


def test_ratios_pair_the_epochs_of_the_same_round():
    def run(*seconds: float) -> dict:
        return {"epochs": [{"seconds": s} for s in seconds], "seconds_per_epoch": sorted(seconds[1:])[1]}

    # round 3 ran 10x slower for both; in two of the three timed rounds a took twice b's time
    a, b = run(1, 2, 20, 4), run(1, 1, 10, 8)
    assert paired_ratio(a, b) == 2.0
    assert a["seconds_per_epoch"] / b["seconds_per_epoch"] == 0.5  # what unpaired medians would have said

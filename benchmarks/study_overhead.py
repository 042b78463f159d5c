"""What the study driver costs: seconds per trial beyond the trial's own fit, and memory over many trials.

    python -m benchmarks.study_overhead [--trials 20] [--json benchmarks/results/study_overhead.json]

Runs a repeat study of ``--trials`` one-epoch seed-config trials on the tests' small fixture in one process
(``--workers 1``), then reads each trial from the storage: its overhead is Optuna's trial duration (from the trial's
creation to its result being stored) minus the fit's own wall time, and ``rss_mb`` is the process's resident memory
after the trial. A leak would show as RSS growing from trial to trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import yaml

from benchmarks.bench import ROOT, circumstances
from fashion_cnn import study

FIXTURE = ROOT / "tests" / "data" / "fashion_mnist_small"


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.study_overhead``: a study's own seconds and memory per trial; its exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20, help="at least 2")
    p.add_argument("--json", type=Path, help="also write the figures and the circumstances here")
    args = p.parse_args(argv)
    if args.trials < 2:
        p.error("--trials must be at least 2")
    if study.resident_mb() is None:
        p.error("resident memory is read from /proc/self/statm: Linux only")
    record = circumstances()
    with tempfile.TemporaryDirectory(prefix="study-overhead-") as tmp:
        spec = Path(tmp) / "overhead.yaml"
        spec.write_text(yaml.safe_dump({"base": "seed", "repeat": {"seeds": list(range(args.trials))}, "overrides": {
            "trainer.max_epochs": 1, "data.data_dir": str(FIXTURE), "data.verify": False, "data.download": False,
            "trainer.enable_model_summary": False}}))
        if study.main([str(spec), "--dir", str(Path(tmp) / "study"), "--workers", "1"]) != 0:
            sys.exit("the study failed")
        trials = optuna.load_study(study_name="overhead", storage=f"sqlite:///{tmp}/study/study.db").trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    overhead = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["wall_s"] for t in done]
    rss = [t.user_attrs["rss_mb"] for t in done]
    record["results"] = {"trials": len(done), "overhead_s": [round(o, 3) for o in overhead], "rss_mb": rss,
                         "fit_wall_s": [round(t.user_attrs["wall_s"], 2) for t in done]}
    print(f"{len(done)} trials: driver overhead per trial median {statistics.median(overhead):.3f} s, "
          f"max {max(overhead):.3f} s (fits took a median {statistics.median(record['results']['fit_wall_s'])} s)")
    print(f"RSS after trial 1: {rss[0]:.0f} MB, after trial {len(rss)}: {rss[-1]:.0f} MB "
          f"({rss[-1] - rss[0]:+.0f} MB; after trial 2: {rss[1] - rss[0]:+.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

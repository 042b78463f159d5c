"""Trials per hour of a seed-config repeat study: ``--workers 1`` (one process, all cores) against ``--workers N``.

    python -m benchmarks.study_workers [--seeds 4] [--epochs 3] [--workers 1,2] [--rounds 2]
        [--json benchmarks/results/study_workers.json]

Each measurement is the whole ``python -m fashion_cnn.study`` command on a fresh study directory: a repeat of the
seed config (``--trainer.max_epochs`` shortened; every trial still loads the data, trains, tests and writes its run).
The settings alternate (1, 2, 2, 1, ...) so that a slow spell on a shared machine does not fall on one side only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.bench import ROOT, circumstances


def study_file(directory: Path, seeds: int, epochs: int, data_dir: str) -> Path:
    """A repeat study of the seed config over ``seeds`` seeds, without pictures or a progress bar."""
    path = directory / "seed_throughput.yaml"
    path.write_text(yaml.safe_dump({"base": "seed", "repeat": {"seeds": list(range(seeds))}, "overrides": {
        "trainer.max_epochs": epochs, "trainer.enable_progress_bar": False, "data.data_dir": data_dir}}))
    return path


def measure(spec: Path, workers: int, directory: Path) -> float:
    """Wall seconds of the study command with ``workers`` processes, from its start to its exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fashion_cnn.study", str(spec), "--dir", str(directory),
                    "--workers", str(workers)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.study_workers``: trials per hour of the same study under each ``--workers`` setting;
    its exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_workers", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=4, help="trials per study")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    p.add_argument("--workers", default="1,2", help="the settings to compare, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="measurements per setting (alternating order)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--json", help="also write the figures and the circumstances here")
    args = p.parse_args(argv)
    settings = [int(w) for w in args.workers.split(",")]
    record = {**circumstances(), "seeds": args.seeds, "epochs": args.epochs}
    seconds: dict[int, list[float]] = {w: [] for w in settings}
    with tempfile.TemporaryDirectory(prefix="study-workers-") as tmp:
        spec = study_file(Path(tmp), args.seeds, args.epochs, args.data_dir)
        for r in range(args.rounds):
            for w in settings if r % 2 == 0 else settings[::-1]:
                s = measure(spec, w, Path(tmp) / f"w{w}-r{r}")
                seconds[w].append(round(s, 1))
                print(f"round {r + 1}: --workers {w}: {s:.1f} s, {args.seeds * 3600 / s:.1f} trials/hour", flush=True)
    record["results"] = {str(w): {"seconds": s, "trials_per_hour": round(args.seeds * 3600 / statistics.median(s), 1)}
                         for w, s in seconds.items()}
    base = record["results"][str(settings[0])]["trials_per_hour"]
    for w in settings:
        tph = record["results"][str(w)]["trials_per_hour"]
        print(f"--workers {w}: {tph:.1f} trials/hour (median of {args.rounds}), "
              f"{tph / base:.2f}x --workers {settings[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

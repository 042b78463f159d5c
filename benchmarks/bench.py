"""Seconds per epoch, side by side, in one run: the notebook's loop, the bare floor, and the project's entry point.

    python -m benchmarks.bench [--epochs 6] [--json benchmarks/results/bench.json]
    python -m benchmarks.bench --time-to 0.885 --variants notebook,project --config fast [--json .../bench_fast.json]

Each variant runs in its own process on the same real data (batch 64, the seed CNN, SGD 0.01/0.5), so its peak
RSS is its own. An epoch is 60,000 training images plus the 10,000-image test. The variants take turns: all start
and load, then run epoch 1 one after another, then epoch 2, and so on, one process at a time (a round per epoch).
Seconds per epoch are the median over the rounds after the first (warm-up); a ratio between two variants is the
median of their per-round ratios, so a slow spell on a shared machine scales both sides of each. Even so, compare
the ratios, not the seconds. With ``--time-to`` the variants run one after another instead, each until it reaches
that test accuracy, timed from its process's start.

- notebook: the notebook's code (torchvision's FashionMNIST class, per-image ToTensor + Normalize, DataLoader).
- floor:    the same SGD steps on normalised tensors already in memory; no framework, no logging.
- floor_cl: the floor with the network in channels-last memory format (what the seed config uses).
- bare:     the project's module and data in a bare Lightning Trainer (no logger, checkpoints or callbacks): what
            Lightning's own loop costs over floor_cl (bare.py).
- project:  ``python -m fashion_cnn.fit --config seed`` (Lightning, torchmetrics, TensorBoard, checkpoints).

The JSON file also records what a citation needs: when, the command line, the commit, versions, CPUs and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from benchmarks.turns import Worker

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("notebook", "floor", "floor_cl", "bare", "project")


def command(name: str, epochs: int, config: str, target: float | None, data_dir: str) -> list[str]:
    """The command line that runs one variant in a fresh process (in ROOT)."""
    if name == "project":
        logs = tempfile.mkdtemp(prefix="bench-logs-")
        cmd = [sys.executable, "-m", "fashion_cnn.fit", "--config", config, "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", logs, "--data.data_dir", data_dir,
               "--trainer.callbacks+=benchmarks.callback.BenchWorker"]
        if target is None:  # timing epochs; to reach a target, the config's own schedule decides the length
            cmd += ["--trainer.max_epochs", str(epochs)]
        return cmd
    module = "bare" if name == "bare" else "workers"
    call = f"{module}.{name}({epochs}, {target!r}, {data_dir!r})"
    return [sys.executable, "-c", f"from benchmarks import {module}; {call}"]


def summary(worker: Worker, target: float | None) -> dict:
    """A finished worker's result: its epochs, the median seconds of those after the first, its peak RSS and,
    with a target, when it first reached it."""
    if not worker.epochs:
        sys.exit(f"{worker.name} produced no epochs:\n{''.join(worker.lines[-20:])}")
    timed = [e["seconds"] for e in worker.epochs[1:]] or [worker.epochs[0]["seconds"]]
    result = {"seconds_per_epoch": statistics.median(timed), "peak_rss_gb": worker.peak_rss_gb,
              "epochs": worker.epochs, "wall_seconds": worker.wall_seconds}
    if target is not None:
        reached = next((e for e in worker.epochs if e["acc"] >= target), None)
        result["epochs_to_target"] = reached and reached["epoch"]
        result["wall_to_target"] = reached and reached["wall"]
        result["epoch_seconds_to_target"] = reached and sum(e["seconds"] for e in worker.epochs[: reached["epoch"]])
    return result


def paired_ratio(a: dict, b: dict) -> float:
    """a's epoch time over b's, as the median over the timed rounds of the two epochs run one after the other in
    the same round: a slow spell on the machine then scales both sides of each ratio."""
    pairs = [x["seconds"] / y["seconds"] for x, y in zip(a["epochs"][1:], b["epochs"][1:], strict=False)]
    return statistics.median(pairs) if pairs else a["seconds_per_epoch"] / b["seconds_per_epoch"]


def run_in_turns(names: list[str], epochs: int, config: str, data_dir: str) -> dict[str, dict]:
    """Start every variant, let each load, then run their epochs in rotation, one process at a time."""
    workers = [Worker(name, command(name, epochs, config, None, data_dir), turns=True, cwd=ROOT) for name in names]
    for worker in workers:  # imports and data loading, all at once: none of it is timed
        worker.read()
    for epoch in range(1, epochs + 1):
        print(f"epoch {epoch}:", end="", flush=True)
        for worker in workers:
            if worker.alive:
                worker.run_epoch()
                last = worker.epochs[-1] if worker.epochs else {"seconds": float("nan")}
                print(f"  {worker.name} {last['seconds']:.2f} s", end="", flush=True)
        print()
    for worker in workers:
        worker.finish()
    return {worker.name: summary(worker, None) for worker in workers}


def run_one_by_one(names: list[str], epochs: int, config: str, target: float, data_dir: str) -> dict[str, dict]:
    """Run each variant to the end on its own (time to a target accuracy counts from the process's start)."""
    results = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        worker = Worker(name, command(name, epochs, config, target, data_dir), turns=False, cwd=ROOT)
        worker.finish()
        results[name] = summary(worker, target)
    return results


def git(*args: str) -> str | None:
    """A git command's output in ROOT, or None outside a git checkout (or without git)."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu() -> dict:
    """The CPU's model and whether it has native bfloat16 (which decides fit's precision for fast and strong), from
    /proc/cpuinfo without importing torch; None where there is none (not Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or None, "cpu_bfloat16": None}
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in info.splitlines())}
    flags = set(fields.get("flags", "").split())  # the last processor's, as its model name
    return {"cpu": fields.get("model name") or None, "cpu_bfloat16": bool({"avx512_bf16", "amx_tile"} & flags)}


def circumstances() -> dict:
    """What a citation of this run needs besides its figures (the load average is the whole machine's)."""
    # Versions come from the packages' metadata, not from importing them: the peak RSS wait4 reports for a worker
    # is at least this process's own at the fork, so the driver must stay small.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return {"started": datetime.now().astimezone().isoformat(timespec="seconds"), "argv": sys.orig_argv,
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "python": sys.version.split()[0], "torch": version("torch"), "lightning": version("lightning"),
            **cpu(), "cpu_count": os.cpu_count(), "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def print_ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Paired time ratios and peak-RSS ratios, printed and returned: the project's to every other variant, and the
    bare Trainer's to the channels-last floor (what Lightning's loop itself costs)."""
    ratios = {}
    pairs = [("project", other) for other in ("notebook", "floor", "floor_cl", "bare")] + [("bare", "floor_cl")]
    for a, b in pairs:
        if a in results and b in results:
            key = b if a == "project" else f"{a}/{b}"  # "notebook": project/notebook, as in earlier JSON files
            ratios[key] = {"time": paired_ratio(results[a], results[b]),
                           "peak_rss": results[a]["peak_rss_gb"] / results[b]["peak_rss_gb"]}
            print(f"{a + '/' + b:<17} time {ratios[key]['time']:5.2f}x   peak RSS {ratios[key]['peak_rss']:5.2f}x")
    return ratios


def print_times_to_target(results: dict[str, dict], target: float) -> float | None:
    """When each variant first reached the target, printed; the project's time to it over the notebook's."""
    for name, r in results.items():
        if r["epochs_to_target"]:
            print(f"{name:<9} reached {target:.1%} at epoch {r['epochs_to_target']}: "
                  f"{r['wall_to_target']:.1f} s after starting ({r['epoch_seconds_to_target']:.1f} s in epochs)")
        else:
            print(f"{name:<9} did not reach {target:.1%} in {len(r['epochs'])} epochs")
    if not (all(r["epochs_to_target"] for r in results.values()) and {"notebook", "project"} <= set(results)):
        return None
    ratio = results["project"]["wall_to_target"] / results["notebook"]["wall_to_target"]
    print(f"project/notebook time to {target:.1%}: {ratio:.3f} (1/{1 / ratio:.1f})")
    return ratio


def main() -> None:
    """``python -m benchmarks.bench`` (``make bench``, ``make bench-fast``): run the variants, print and save the
    table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (the first is a warm-up)")
    parser.add_argument("--config", default="seed", help="the project's config for the 'project' variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--time-to", type=float, default=None, dest="target",
                        help="instead: train until this test accuracy (e.g. 0.885) and report the time to it")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the record (default: benchmarks/results/bench.json, with --time-to "
                             "bench_<config>.json: each kind of run keeps its own file)")
    parser.add_argument("--data_dir", default="data", help="as the DataModule's data_dir (default: data)")
    args = parser.parse_args()
    default_json = "bench.json" if args.target is None else f"bench_{Path(args.config).stem}.json"
    args.json = args.json or ROOT / "benchmarks" / "results" / default_json
    names, data_dir = args.variants.split(","), str(Path(args.data_dir).resolve())
    if unknown := set(names) - set(VARIANTS):
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    run = circumstances()
    print(f"load average at start: {run['load_average_start']}", flush=True)
    if args.target is None:
        results = run_in_turns(names, args.epochs, args.config, data_dir)
    else:
        results = run_one_by_one(names, args.epochs, args.config, args.target, data_dir)
    run |= {"finished": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    for name, r in results.items():
        print(f"  {name:<9} {r['seconds_per_epoch']:6.2f} s/epoch   peak RSS {r['peak_rss_gb']:.2f} GB   "
              f"test acc {r['epochs'][-1]['acc']:.4f}", flush=True)
    print()
    if args.target is None:
        comparison = {"project_ratios": print_ratios(results)}
    else:
        comparison = {"project_over_notebook_time_to_target": print_times_to_target(results, args.target)}
    print(f"load average at end: {run['load_average_end']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"run": run, "args": vars(args) | {"json": str(args.json)}, "results": results} | comparison
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

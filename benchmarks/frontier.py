"""Time to accuracy: how soon each shipped config first reaches 88.5, 90, 92, 93, 94 and 95% test accuracy.

    python -m benchmarks.frontier [STUDY_DIR ...] [--json benchmarks/results/frontier.json]
    make frontier     # first runs studies/{fast,tiny,quick,strong12,strong}_repeats.yaml, 1 worker (kept when done)

Each STUDY_DIR is a repeat study (default: lightning_logs/studies/{fast,tiny,quick,strong12,strong}_repeats;
strong12 is the strong config cut to 12 epochs). For every trial, the time of an epoch is its ``test/acc`` event's
wall time minus the trial's start, as Optuna recorded it: the whole fit (parsing, loading the data, building the
model, training, testing) but not the interpreter's start and imports, which a study pays once. A time is the mean
over the seeds; a target that not every seed reaches says how many did. "shortest" is the quickest config all of
whose seeds reached the target. Trials that ran with fewer torch threads than a process gets here by default
(``--workers 2``) are left out: their time is not what one command takes here. The notebook's own loop comes from
``make bench-fast`` (benchmarks/results/bench_fast.json), which times it from its process's start.

A first-reached test accuracy is optimistic (it picks the moment by looking at the test set); the last table is the
honest one: each config's last-epoch accuracy, with no epoch chosen, its final test (the reported checkpoint, with the
extra test-time views of ``model.final_shift`` where a config has them), its whole wall time, and what its training
computes: its FLOPs (forward and backward of every step, :func:`benchmarks.flops.training_flops` of the run's own
``config.yaml``; evaluation apart) and their fraction of the shipped ``strong`` config's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from benchmarks.bench import ROOT, circumstances
from benchmarks.flops import REFERENCE, config_values, tflop, training_flops
from fashion_cnn.compare import mean_std_ci
from fashion_cnn.runs import run_scalars, study_run_dir

TARGETS = (0.885, 0.90, 0.92, 0.93, 0.94, 0.95)
DEFAULT_STUDIES = ("fast_repeats", "tiny_repeats", "quick_repeats", "strong12_repeats", "strong_repeats")


@dataclass
class Trial:
    """One complete trial: (seconds since it started, test accuracy) after every epoch, its whole fit's time, its
    final test's accuracy (with the views of ``model.final_shift``, which per-epoch tests leave out) and its run's
    config.yaml (None: the run has none)."""

    points: list[tuple[float, float]]
    wall_s: float = 0.0
    final: float | None = None
    config: Path | None = None


def trial_curves(study_dir: Path) -> list[Trial]:
    """The complete trials of a study that ran with every core."""
    storage = f"sqlite:///{study_dir / 'study.db'}"
    curves = []
    for summary in optuna.get_all_study_summaries(storage):
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).trials:
            if trial.state != optuna.trial.TrialState.COMPLETE or trial.user_attrs.get("threads") != full_threads():
                continue
            run_dir = study_run_dir(Path(trial.user_attrs["run_dir"]), study_dir)
            logged = run_scalars(run_dir)
            start = trial.datetime_start.timestamp()
            points = [(e.wall_time - start, e.value) for e in logged.get("test/acc", [])]
            if not points:  # data.test: false, a model-selection run: no test accuracy to time
                print(f"left out: trial {trial.number} of {study_dir.name} never tested", file=sys.stderr)
                continue
            if points[0][0] < 0:  # a retried trial resumed an earlier attempt's run: no single timeline
                print(f"left out: trial {trial.number} of {study_dir.name} was resumed", file=sys.stderr)
                continue
            final = logged.get("final/test_acc", [])
            config = run_dir / "config.yaml"
            curves.append(Trial(points, trial.user_attrs["wall_s"], final[-1].value if final else None,
                                config if config.is_file() else None))
    return curves


def full_threads() -> int:
    """The torch threads a process gets here by default (every physical core): what one command would use."""
    return torch.get_num_threads()


def first_reached(curve: Trial, target: float) -> float | None:
    """The seconds at which ``curve`` first reaches ``target`` test accuracy (None: never)."""
    return next((t for t, acc in curve.points if acc >= target), None)


def trained_flops(curves: list[Trial]) -> int | None:
    """The training FLOPs of a study's trials, counted from their runs' config.yaml; None when a run has none, or
    when the trials' counts differ (a repeat's trials differ only in their seeds, which change no count)."""
    counts: dict[str, int] = {}
    for curve in curves:
        if curve.config is None:
            return None
        values = config_values(curve.config)[1]
        values.pop("seed_everything", None)
        values.get("data", {}).pop("seed", None)
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in counts:  # counted once per distinct config: the seeds' runs share one
            counts[key] = training_flops(curve.config)["training_flops"]
    return counts.popitem()[1] if len(set(counts.values())) == 1 else None


def notebook_cells(bench_json: Path) -> dict[float, str]:
    """The notebook loop's seconds to each target from ``make bench-fast``, which stops at its own ``--time-to``."""
    if not bench_json.is_file():
        return {}
    record = json.loads(bench_json.read_text())
    epochs, stop = record["results"]["notebook"]["epochs"], record["args"]["target"]
    cells = {}
    for target in TARGETS:
        reached = next((e["wall"] for e in epochs if e["acc"] >= target), None)
        cells[target] = (f"{reached:.0f} s" if reached is not None else
                         f"not measured (bench-fast stops at {100 * stop:g}%)" if target > stop else "not reached")
    return cells


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.frontier`` (``make frontier``): the time-to-accuracy table; its exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.split("\n")[0])
    p.add_argument("studies", nargs="*", type=Path,
                   default=[ROOT / "lightning_logs" / "studies" / s for s in DEFAULT_STUDIES])
    p.add_argument("--bench", type=Path, default=ROOT / "benchmarks" / "results" / "bench_fast.json",
                   help="make bench-fast's JSON, for the notebook loop's column")
    p.add_argument("--json", type=Path, help="also write the figures and the circumstances here")
    args = p.parse_args(argv)
    configs: dict[str, list] = {}
    for study_dir in args.studies:
        if not (study_dir / "study.db").is_file():
            sys.exit(f"{p.prog}: error: no study in {study_dir}; run it first (make frontier does)")
        curves = trial_curves(study_dir)
        if not curves:
            sys.exit(f"{p.prog}: error: {study_dir} has no finished trial run with {full_threads()} threads; "
                     "run it with --workers 1")
        configs[study_dir.name.removesuffix("_repeats")] = curves
    notebook = notebook_cells(args.bench)

    record: dict = {**circumstances(), "bench_fast": str(args.bench), "reached": {}, "last_epoch": {}}
    head = ["target", "shortest", *(f"`{c}`" for c in configs), "notebook loop"]
    rows = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for target in TARGETS:
        cells, record["reached"][str(target)], every_seed = [], {}, {}
        for name, curves in configs.items():
            times = [t for c in curves if (t := first_reached(c, target)) is not None]
            record["reached"][str(target)][name] = {"seconds": [round(t, 1) for t in times], "runs": len(curves)}
            cell = f"{statistics.fmean(times):.0f} s" if times else "not reached"
            cells.append(cell if len(times) in (0, len(curves)) else f"{cell} ({len(times)} of {len(curves)} seeds)")
            if times and len(times) == len(curves):
                every_seed[name] = statistics.fmean(times)
        cells.append(notebook.get(target, "-"))
        best = min(every_seed, key=every_seed.get) if every_seed else None
        cells.insert(0, f"{every_seed[best]:.0f} s (`{best}`)" if best else "none yet")
        rows.append(f"| {100 * target:g}% | {' | '.join(cells)} |")
    reference = training_flops(REFERENCE)["training_flops"]
    record["reference_training_flops"] = reference
    rows += ["", "| config | seeds | last-epoch test accuracy (mean ± std) | final test (mean ± std) | "
                 f"wall time per run (mean) | training TFLOP | of `{REFERENCE}`'s |", "|---|---|---|---|---|---|---|"]
    for name, curves in configs.items():
        mean, std, _ = mean_std_ci([100 * c.points[-1][1] for c in curves])
        finals = [100 * c.final for c in curves if c.final is not None]
        final = "{:.2f}% ± {:.2f}".format(*mean_std_ci(finals)[:2]) if len(finals) == len(curves) else "-"
        wall = statistics.fmean(c.wall_s for c in curves)
        flops = trained_flops(curves)
        compute = f"{tflop(flops / 1e12)} | {100 * flops / reference:.1f}%" if flops is not None else "- | -"
        record["last_epoch"][name] = {"acc": [c.points[-1][1] for c in curves], "final_acc": [c.final for c in curves],
                                      "seconds": [round(c.wall_s, 1) for c in curves], "training_flops": flops}
        rows.append(f"| `{name}` | {len(curves)} | {mean:.2f}% ± {std:.2f} | {final} | {wall:.0f} s | {compute} |")
    print("\n".join(rows))
    if args.json:
        record["table"] = "\n".join(rows)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

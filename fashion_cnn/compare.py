"""Compare runs and studies: ``python -m fashion_cnn.compare RUN_OR_STUDY... [--out DIR]``.

Each argument is a run directory (``.../version_N``), a directory of runs (``lightning_logs``), or a study's
directory (its finished trials, from its ``study.db``). Runs are grouped by their config.yaml, seeds aside; the
Markdown table (``comparison.md``; each run's own figures go to ``comparison.json``) shows what differs between
groups, the number of seeds, the final test accuracy as mean ± std with a 95% confidence interval (Student's t over
seeds), the best validation accuracy and the wall time per run (a study's trial: its whole fit; another run: from
its first to its last logged event). With ``--baseline RUN_OR_STUDY`` (repeatable: one config's seeds may span
several studies) a column gives each group's gain over that group, paired by seed: the mean ± std of the per-seed
differences, over the seeds both ran, and a one-sided paired t-test's p-value for "no gain". The PNG shows a
search's metric against each searched parameter, or the spread of each repeated config over its seeds.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure
from optuna.storages import BaseStorage

from fashion_cnn import commands, figures
from fashion_cnn.callbacks import flatten
from fashion_cnn.runs import EVENTS, RUN_DIR, other_loggers, run_config, run_scalars, study_run_dir
from fashion_cnn.storage import open_storage

PROG = "python -m fashion_cnn.compare"
SEED_KEYS = {"seed_everything", "data.seed"}
# keys that change no result: where logs and checkpoints go, and how progress is shown
IGNORED = ("trainer.logger", "trainer.plugins", "ckpt_path", "trainer.enable_progress_bar",
           "trainer.callbacks.TQDMProgressBar", "trainer.callbacks.BatchLogProgressBar")
# Student's t, two-sided 95%, by degrees of freedom (1.96 beyond 30)
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass
class Run:
    """One run as a comparison sees it: its flat config (``model.lr``, ...), its final test accuracy and best
    validation accuracy (None where it has none), its wall time, and whether it finished (not pruned)."""

    path: Path
    config: dict[str, Any]
    test_acc: float | None
    best_val: float | None
    wall_s: float
    complete: bool = True
    logged_with: tuple[str, ...] = ()  # the loggers of a run without TensorBoard events (not complete: no figures)


def callback_keys(callbacks: Any) -> dict[str, str]:
    """A config's callbacks as one key each, ``trainer.callbacks.<Class>``: its arguments, so that runs which differ
    by a callback (an EMA, say) differ by that key alone."""
    keys = {}
    for c in callbacks or []:
        if isinstance(c, dict):
            name = str(c.get("class_path", "?")).rsplit(".", 1)[-1]
            args = (c.get("init_args") or {}).items()
            keys[f"trainer.callbacks.{name}"] = ", ".join(f"{k}={v}" for k, v in args if v is not None)
    return keys


def read_run(path: Path, complete: bool | None = None) -> Run:
    """A run directory's config (flat), final test accuracy, best validation accuracy and wall time, from its
    config.yaml and TensorBoard events. ``complete``: whether it finished (None: it did if it has its final test,
    or never reads the test set: a model-selection run)."""
    if not path.is_dir():
        raise commands.CommandError(f"{path}: no such run directory (moved or deleted?); name the runs that exist")
    raw = run_config(path)
    callbacks = (raw.get("trainer") or {}).pop("callbacks", None)
    config = flatten(raw) | callback_keys(callbacks)
    if not any(path.glob(EVENTS)) and (others := other_loggers(raw)):  # its figures are where compare cannot read
        return Run(path, config, None, None, 0.0, complete=False, logged_with=tuple(others))
    logged = run_scalars(path)
    test = logged["final/test_acc"][-1].value if "final/test_acc" in logged else None
    val = max(e.value for e in logged["val/acc"]) if "val/acc" in logged else None
    times = [e.wall_time for events in logged.values() for e in events]
    if complete is None:  # a run stopped before its final test (killed, diverged, still running) is not a result
        complete = test is not None or (raw.get("data") or {}).get("test") is False
    return Run(path, config, test, val, (max(times) - min(times)) if times else 0.0, complete)


def collect(target: Path, storage: str | BaseStorage | None = None, study_name: str | None = None) -> list[Run]:
    """The runs a command-line argument names (a study: its finished trials, pruned ones marked incomplete; run
    directories: those that stopped before their final test marked incomplete).
    ``storage``: the study's Optuna storage, opened or as a URL (``journal:PATH`` too), when not its study.db."""
    db = target / "study.db"
    if (storage or db.is_file()) and not RUN_DIR.fullmatch(target.name):
        if storage is None or isinstance(storage, str):
            storage = open_storage(storage or f"sqlite:///{db}")
        names = [study_name] if study_name else [s.study_name for s in optuna.get_all_study_summaries(storage)]
        runs = []
        for name in names:
            for trial in optuna.load_study(study_name=name, storage=storage).trials:
                run_dir = trial.user_attrs.get("run_dir")
                done = trial.state == optuna.trial.TrialState.COMPLETE
                if run_dir and (done or trial.state == optuna.trial.TrialState.PRUNED):
                    run = read_run(study_run_dir(Path(run_dir), target), complete=done)
                    run.wall_s = trial.user_attrs.get("wall_s", run.wall_s)  # the whole fit, setup included
                    runs.append(run)
        return runs
    if RUN_DIR.fullmatch(target.name):
        return [read_run(target)]
    root = target / "lightning_logs" if (target / "lightning_logs").is_dir() else target
    found = sorted((p for p in root.iterdir() if RUN_DIR.fullmatch(p.name)), key=lambda p: p.name) \
        if root.is_dir() else []
    if not found:
        raise commands.CommandError(f"{target}: no runs (version_N directories) and no study.db here")
    return [read_run(p) for p in found]


def differing_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs (the seeds and keys that change no result aside)."""
    keys = sorted({k for r in runs for k in r.config if k not in SEED_KEYS and not k.startswith(IGNORED)})
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the 95% confidence interval of the mean."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    std = statistics.stdev(values)
    return mean, std, (T95[n - 2] if n - 1 <= len(T95) else 1.96) * std / math.sqrt(n)


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` (a positive integer) degrees of freedom: the finite series of
    Abramowitz & Stegun 26.7.3-4, exact for integer ``df``, so no SciPy is needed."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    for j in range(1, (df - 1) // 2 if df % 2 else df // 2):  # the series' terms beyond its first
        term *= c2 * (2 * j / (2 * j + 1) if df % 2 else (2 * j - 1) / (2 * j))
        total += term
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + ...)), the last term only beyond df 1
        inside = theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0)
        central = 2 / math.pi * inside
    else:  # even: A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        central = math.sin(theta) * total
    return (1 - math.copysign(central, t)) / 2  # central = P(|T| < |t|)


def groups(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    """The runs grouped by their values of ``keys``: one group per config, its seeds in it."""
    out: dict[tuple, list[Run]] = {}
    for run in runs:
        out.setdefault(tuple(run.config.get(k) for k in keys), []).append(run)
    return out


def paired_gain(members: list[Run], baseline: list[Run]) -> str:
    """``members``' gain over ``baseline`` in points, paired by seed: mean ± std of the per-seed differences of the
    final test accuracy, or of the best validation accuracy when either side was not tested, and the one-sided
    paired t-test's p-value that the gain is not above zero (t = mean / (std / sqrt(n)), n - 1 degrees of freedom)."""
    both = [*members, *baseline]
    metric = "test_acc" if all(r.test_acc is not None for r in both) else "best_val"
    if any(getattr(r, metric) is None for r in both):
        return "no common metric"
    ours, theirs = ({r.config.get("seed_everything"): 100 * getattr(r, metric) for r in runs}
                    for runs in (members, baseline))
    diffs = [ours[seed] - theirs[seed] for seed in ours if seed in theirs]
    if not diffs:
        return "no common seed"
    n = len(diffs)
    if n < 2:
        return f"{mean_std_ci(diffs)[0]:+.2f} (1 seed)"
    mean, std, _ = mean_std_ci(diffs)
    p = t_sf(mean / (std / math.sqrt(n)), n - 1) if std > 0 else float(mean <= 0)
    return f"{mean:+.2f} ± {std:.2f} ({n} seeds, p = {p:.3f})"


def table(runs: list[Run], baseline: list[Run] | None = None) -> str:
    """The Markdown table: one row per config (finished runs only), its seeds' mean ± std, 95% CI, validation
    accuracy and wall time, and with ``baseline`` the paired gain over it; best first."""
    complete = [r for r in runs if r.complete]
    keys = differing_keys(complete)
    gain = " gain over the baseline (paired by seed) |" if baseline else ""
    rows = ["| what differs | seeds | test accuracy (mean ± std) | 95% CI | best val accuracy | wall time per run |"
            + gain, "|---|---|---|---|---|---|" + ("---|" if baseline else "")]
    baseline_paths = {r.path.resolve() for r in baseline or []}
    grouped = sorted(groups(complete, keys).items(), key=lambda g: -max((r.best_val or r.test_acc or 0) for r in g[1]))
    for values, members in grouped:
        label = ", ".join(f"{k}={_short(v)}" for k, v in zip(keys, values, strict=True)) or "(same config)"
        tests = [100 * r.test_acc for r in members if r.test_acc is not None]
        if tests:
            mean, std, half = mean_std_ci(tests)
            test = f"{mean:.2f}% ± {std:.2f}" if len(tests) > 1 else f"{mean:.2f}%"
            ci = f"[{mean - half:.2f}, {mean + half:.2f}]%" if len(tests) > 1 else "-"
        else:
            test, ci = "not measured (selection on val)", "-"
        vals = [100 * r.best_val for r in members if r.best_val is not None]
        val = f"{statistics.fmean(vals):.2f}%" if vals else "-"
        wall = statistics.fmean(r.wall_s for r in members)
        seeds = len({r.config.get("seed_everything") for r in members})
        row = f"| {label} | {seeds} | {test} | {ci} | {val} | {wall:.0f} s |"
        if baseline:
            is_baseline = {r.path.resolve() for r in members} == baseline_paths
            row += f" {'(the baseline)' if is_baseline else paired_gain(members, baseline)} |"
        rows.append(row)
    unfinished, elsewhere = _left_out(runs)
    notes = [f"{unfinished} unfinished or pruned run(s) not in the table."] if unfinished else []
    notes += [f"{len(elsewhere)} run(s) not in the table: logged with {_loggers(elsewhere)}, without the "
              f"TensorBoard events compare reads."] if elsewhere else []
    return "\n\n".join(["\n".join(rows), *notes])


def _left_out(runs: list[Run]) -> tuple[int, list[Run]]:
    """What the table leaves out: how many runs are unfinished or pruned, and the runs logged without TensorBoard."""
    return sum(not r.complete and not r.logged_with for r in runs), [r for r in runs if r.logged_with]


def _loggers(runs: list[Run]) -> str:
    """The loggers that logged ``runs`` instead of TensorBoard, by class name."""
    return ", ".join(sorted({name for r in runs for name in r.logged_with}))


def figure(runs: list[Run]) -> Figure:
    """Repeats: each config's accuracies over its seeds, with mean and 95% CI. A search: best validation accuracy
    against each searched parameter, pruned trials marked."""
    complete = [r for r in runs if r.complete]
    keys = differing_keys(complete)
    grouped = groups(complete, keys)
    if any(len(m) > 1 for m in grouped.values()) or not keys:  # repeats: the spread of each config over seeds
        fig = figures.figure(max(5.0, 1.8 + 1.6 * len(grouped)), 4.2)
        ax = fig.add_subplot()
        for i, members in enumerate(grouped.values()):
            acc = [100 * (r.test_acc if r.test_acc is not None else r.best_val or 0) for r in members]
            ax.plot([i] * len(acc), acc, "o", alpha=0.6)
            if len(acc) > 1:
                mean, _, half = mean_std_ci(acc)
                ax.errorbar([i + 0.15], [mean], yerr=[half], fmt="s", color="black", capsize=4)
        labels = ["\n".join(f"{k.split('.')[-1]}={str(v)[:20]}" for k, v in zip(keys, values, strict=True)) or "runs"
                  for values in grouped]
        ax.set_xticks(range(len(grouped)), labels, fontsize=7)
        ax.set_xlim(-0.6, len(grouped) - 0.4)
        tested = all(r.test_acc is not None for r in complete)
        ax.set_ylabel("final test accuracy (%)" if tested else "accuracy (%): test, else best validation")
        ax.set_title("Spread over seeds (black: mean, 95% CI)", fontsize=10)
        ax.grid(alpha=0.3)
        return fig
    fig = figures.figure(max(5.0, 3.6 * len(keys)), 3.6)
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        numeric = all(isinstance(r.config.get(key), int | float) and not isinstance(r.config.get(key), bool)
                      for r in runs)
        for done, marker in ((True, "o"), (False, "x")):  # a key that is not a number throughout: its values as text
            pts = [(r.config.get(key) if numeric else str(r.config.get(key)), 100 * r.best_val) for r in runs
                   if r.complete == done and r.best_val]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, alpha=0.7, label="complete" if done else "pruned")
        xs = [r.config.get(key) for r in runs] if numeric else []
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("best validation accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Search: best validation accuracy against each searched parameter", fontsize=10)
    return fig


def report(targets: list[Path], out: Path | None = None, storage: str | BaseStorage | None = None,
           study_name: str | None = None, baseline: list[Path] | None = None) -> str:
    """The Markdown comparison of ``targets`` (and of ``baseline``, with each group's gain over it); also saved
    (with the PNG, and every run's figures as JSON) as ``comparison.md``, ``.png`` and ``.json`` in ``out``
    (default: the first target's directory).
    ``storage``: that of the study ``targets`` name, where it is not its study.db (each baseline reads its own).

    ``baseline`` is one config's runs: a repeat study or a run directory, or several (its seeds run as two studies).
    """
    named = " ".join(map(str, baseline or []))
    base_runs = None
    if baseline:  # each run once, however many of the paths lead to it
        base_runs = list({r.path.resolve(): r for b in baseline for r in collect(Path(b)) if r.complete}.values())
    if baseline and not base_runs:
        raise commands.CommandError(f"--baseline {named}: no finished runs there")
    if base_runs and len(groups(base_runs, differing_keys(base_runs))) > 1:
        raise commands.CommandError(f"--baseline {named}: its runs have different configs; give one config's "
                                    f"runs (repeat studies or run directories)")
    seeds = [r.config.get("seed_everything") for r in base_runs or []]
    if twice := sorted({s for s in seeds if seeds.count(s) > 1}, key=str):
        raise commands.CommandError(f"--baseline {named}: seed {twice[0]} ran more than once there, so a gain "
                                    f"paired by seed would be ambiguous; give each seed's run once")
    runs = [*(base_runs or []), *(r for t in targets for r in collect(Path(t), storage, study_name))]
    runs = list({r.path.resolve(): r for r in runs}.values())  # the baseline may be a target too
    if not any(r.complete for r in runs):  # pruned trials, runs stopped before their final test, other loggers
        unfinished, elsewhere = _left_out(runs)
        why = [f"{unfinished} unfinished or pruned"] if unfinished else []
        why += [f"{len(elsewhere)} logged with {_loggers(elsewhere)}, without the TensorBoard events compare "
                f"reads"] if elsewhere else []
        why_text = f" ({'; '.join(why)})" if why else ""
        tensorboard = ", logged with TensorBoardLogger (fit's default)" if elsewhere else ""
        raise commands.CommandError(f"no finished runs in {', '.join(map(str, targets))}{why_text}; name runs that "
                                    f"reached their final test{tensorboard}")
    text, fig = table(runs, base_runs), figure(runs)  # both made before anything is written
    out = Path(out or targets[0])
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(text + "\n")
        (out / "comparison.json").write_text(json.dumps(per_run(runs), indent=1) + "\n")
        png = figures.save(fig, out / "comparison.png")
    except OSError as err:
        raise commands.cannot_write(out, err, "--out") from None
    return f"{text}\n\nSaved {out / 'comparison.md'}, comparison.json and {png}"


def _shown(path: Path) -> str:
    """A run's directory as a reader can follow it: relative to the working directory when it lies below it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def per_run(runs: list[Run]) -> list[dict[str, Any]]:
    """Each run's figures behind the table, for a citation to point at: its directory, seed, accuracies and time."""
    keys = differing_keys([r for r in runs if r.complete])
    return [{"run": _shown(r.path), "seed": r.config.get("seed_everything"), "complete": r.complete,
             "test_acc": r.test_acc, "best_val_acc": r.best_val, "wall_s": round(r.wall_s, 1),
             "differs": {k: r.config.get(k) for k in keys}} for r in runs]


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.compare``: its exit status."""
    p = commands.parser(PROG, "Compare runs and studies: a Markdown table, a PNG and a JSON file.")
    p.add_argument("targets", nargs="+", type=Path, help="run directories, lightning_logs directories or study dirs")
    p.add_argument("--out", type=Path, help="where to save comparison.md, .png and .json (default: the first target)")
    p.add_argument("--baseline", type=Path, action="append",
                   help="a run or study to compare every group with, paired by seed; repeat it for one config's "
                        "seeds spread over several studies")
    p.add_argument("--storage", help="the Optuna storage of the study directories given, where it is not their "
                   "study.db: journal:PATH, or a server's URL (as given to python -m fashion_cnn.study)")
    args = p.parse_args(argv)
    if args.storage and len(args.targets) > 1:
        p.error("--storage is one study's storage: give that study's directory alone (others as --baseline)")
    return commands.run(PROG, lambda: print(report(args.targets, args.out, args.storage, baseline=args.baseline)) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The study file: a base fit config and either ``repeat`` (seeds) or ``search`` (a space), checked up front.

.. code-block:: yaml

    base: fast                      # seed, fast, tiny, quick, strong, gpu, or a fit config file (relative to this file)
    overrides: {trainer.max_epochs: 6}
    repeat:
      seeds: [0, 1, 2, 3, 4]        # seed_everything and data.seed; the validation split (data.split_seed) stays
    # or
    search:
      trials: 30
      metric: val/acc               # or val/loss, train/acc, train/loss; the test set is never read
      direction: maximize           # the default for an accuracy; minimize for a loss
      val_size: 5000                # data.val_size held out of the training set for every trial
      pruner: median                # median, hyperband, none; or {type: median, n_warmup_steps: 2, ...}
      space:
        model.lr: {low: 0.02, high: 0.5, log: true}
        model.momentum: {low: 0.8, high: 0.98}
        data.batch_size: {choices: [128, 256, 512]}
        trainer.max_epochs: {low: 3, high: 8}   # integer bounds: an integer parameter
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import CategoricalDistribution

from fashion_cnn import config, fit
from fashion_cnn.errors import FashionCNNError, one_line

PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "none": optuna.pruners.NopPruner}
TOP_KEYS = {"name", "base", "overrides", "repeat", "search"}
METRICS = {"val/acc": "maximize", "val/loss": "minimize", "train/acc": "maximize", "train/loss": "minimize"}
SEARCH_KEYS = {"trials", "metric", "direction", "val_size", "pruner", "space"}


class StudyFileError(FashionCNNError):
    """A study file that cannot work; one line naming the file and the key."""


Refuse = Callable[[str], StudyFileError]  # the error for a problem in the study file, its path in front


@dataclass
class Study:
    """A parsed, checked study file."""

    path: Path
    name: str
    base: Path
    overrides: dict[str, Any]
    seeds: list[int] = field(default_factory=list)  # a repeat
    trials: int = 0  # a search
    metric: str = "val/acc"
    direction: str = "maximize"
    val_size: int = 5000
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    space: dict[str, optuna.distributions.BaseDistribution] = field(default_factory=dict)

    @property
    def is_search(self) -> bool:
        """A search (a space to sample), not a repeat (seeds)."""
        return bool(self.space)

    def fit_args(self, params: dict[str, Any]) -> list[str]:
        """The ``python -m fashion_cnn.fit`` arguments of one trial (its parameters or its seed)."""
        args = ["--config", str(self.base), *as_args(self.overrides)]
        if self.is_search:
            args += [f"--data.val_size={self.val_size}", "--data.test=false", *as_args(params)]
        else:
            args += as_args({"seed_everything": params["seed"], "data.seed": params["seed"]})
        return args

    def definition(self) -> str:
        """What makes two runs of a study the same study: its config (the base config's values with the overrides put
        in; seed.yaml, read beneath every config, is not part of it) and its seeds or search. The trial count may
        grow; nothing else may change."""
        # Values, not text: editing a comment in the base config, or a base value the overrides replace, does not
        # make another study.
        values = with_overrides(yaml.safe_load(self.base.read_text()), self.overrides)
        space = {k: optuna.distributions.distribution_to_json(d) for k, d in sorted(self.space.items())}
        return json.dumps({"config": values, "seeds": self.seeds, "metric": self.metric, "direction": self.direction,
                           "val_size": self.val_size, "space": space}, sort_keys=True, default=str)

    def precision_here(self) -> str | None:
        """The precision this machine's fit gives the trials (fit trains bfloat16 only where the CPU has it:
        :func:`fashion_cnn.config.precision_for_this_cpu`), or None when the search chooses it."""
        if "trainer.precision" in self.space:
            return None
        trainer = fit_values(self.base, self.overrides).get("trainer") or {}
        precision = trainer.get("precision") or "32-true"  # Lightning's default
        return str(config.precision_for_this_cpu(precision, str(trainer.get("accelerator", "auto"))))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner the file's ``search.pruner`` names, with its arguments."""
        kwargs = {k: v for k, v in self.pruner.items() if k != "type"}
        return PRUNERS[self.pruner["type"]](**kwargs)


def fit_values(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fit config file's values on top of seed.yaml (read beneath every config), with the overrides put in: a plain
    merge of mappings, enough for the trainer's and the network's values read from it, not jsonargparse's own rules
    (where a config names another ``class_path``, this keeps the base's ``init_args`` that fit would drop)."""
    seed = yaml.safe_load(config.DEFAULT_CONFIG.read_text())
    return with_overrides(with_overrides(seed, yaml.safe_load(path.read_text()) or {}), overrides or {})


def with_overrides(config: dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config's values with overrides put in: dotted keys (``{"data.erase": 0.0}``); a mapping is merged
    key by key into a mapping already there, so the base values it does not name stay."""
    out = copy.deepcopy(config or {})
    for key, value in overrides.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = with_overrides(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    return out


def as_args(values: dict[str, Any]) -> list[str]:
    """``{"model.lr": 0.1}`` as ``["--model.lr=0.1"]`` (values other than strings as JSON, which is YAML)."""
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


def load(path: str | Path) -> Study:
    """Read and check a study file; every problem is a :class:`StudyFileError` before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"{path}: no such study file (the shipped ones are in studies/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StudyFileError(f"{path}: not valid YAML ({one_line(err)[:200]})") from None
    except UnicodeDecodeError:
        raise StudyFileError(f"{path}: not a UTF-8 text file; give a study YAML file saved as UTF-8") from None
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path}: expected a mapping with base and repeat or search")

    def bad(message: str) -> StudyFileError:
        return StudyFileError(f"{path}: {message}")

    if unknown := set(raw) - TOP_KEYS:
        raise bad(f"unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(TOP_KEYS))})")
    if ("repeat" in raw) == ("search" in raw):
        raise bad("give exactly one of `repeat` (seeds) and `search` (a space)")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise bad("overrides must be a mapping of fit keys (e.g. trainer.max_epochs: 6) to values")
    study = Study(path, str(raw.get("name") or path.stem), _base(raw.get("base", "seed"), path, bad), overrides)
    if "repeat" in raw:
        seeds = (raw["repeat"] or {}).get("seeds") if isinstance(raw["repeat"], dict) else None
        if not isinstance(seeds, list) or not seeds:
            raise bad("repeat.seeds must be a non-empty list of integer seeds")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
            raise bad(f"repeat.seeds must be distinct integers, got {seeds}")
        if outside := [s for s in seeds if not 0 <= s <= config.MAX_SEED]:
            raise bad(f"repeat.seeds must be between 0 and {config.MAX_SEED}, got {outside[0]}")
        study.seeds = seeds
    else:
        _search(raw["search"], study, bad)
    check_fit_args(study, bad)
    return study


def _base(base: Any, path: Path, bad: Refuse) -> Path:
    candidates = [config.CONFIG_DIR / f"{base}.yaml", path.parent / str(base), Path(str(base))]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise bad(f"base {base!r} is neither a shipped config ({', '.join(config.shipped_configs())}) nor a config "
                  f"file")
    try:
        found.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad(f"base {base!r}: {found} is not a UTF-8 text file; give a fit config (YAML) saved as UTF-8") from None
    return found.resolve()


def _search(search: Any, study: Study, bad: Refuse) -> None:
    if not isinstance(search, dict):
        raise bad("search must be a mapping with trials, metric, direction and space")
    if unknown := set(search) - SEARCH_KEYS:
        raise bad(f"unknown key search.{sorted(unknown)[0]} (expected {', '.join(sorted(SEARCH_KEYS))})")
    trials = search.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise bad(f"search.trials must be a positive integer, got {trials!r}")
    study.trials = trials
    study.metric = str(search.get("metric", study.metric))
    if study.metric.startswith(("test/", "final/")):
        raise bad(f"search.metric must be a validation (val/...) or training metric, got {study.metric!r}: "
                  f"a search never reads the test set")
    if study.metric not in METRICS:  # another name would train every trial and then have no value to compare
        raise bad(f"search.metric must be one that fit logs ({', '.join(METRICS)}), got {study.metric!r}")
    study.direction = str(search.get("direction", METRICS[study.metric]))
    if study.direction not in ("maximize", "minimize"):
        raise bad(f"search.direction must be maximize or minimize, got {study.direction!r}")
    if study.direction != METRICS[study.metric]:
        raise bad(f"search.direction {study.direction} of {study.metric} would pick the worst trial: set "
                  f"{METRICS[study.metric]}, or leave it out")
    study.val_size = search.get("val_size", study.val_size)
    if not isinstance(study.val_size, int) or study.val_size < 1:
        raise bad(f"search.val_size must be a positive number of images, got {study.val_size!r}")
    pruner = search.get("pruner", "median")
    pruner = {"type": pruner} if isinstance(pruner, str) else pruner
    if not isinstance(pruner, dict) or pruner.get("type") not in PRUNERS:
        raise bad(f"search.pruner must be one of {', '.join(PRUNERS)} (or a mapping with type), got {pruner!r}")
    study.pruner = pruner
    try:
        study.make_pruner()
    except (TypeError, ValueError) as err:
        raise bad(f"search.pruner: {err}") from None
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise bad("search.space must map fit keys (e.g. model.lr) to ranges or choices")
    study.space = {key: _distribution(key, spec, bad) for key, spec in space.items()}


def _distribution(key: str, spec: Any, bad: Refuse) -> optuna.distributions.BaseDistribution:
    where = f"search.space.{key}"
    if isinstance(spec, dict) and "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise bad(f"{where}: choices must be a non-empty list")
        odd = [c for c in spec["choices"] if not isinstance(c, bool | int | float | str | None)]
        if odd:
            raise bad(f"{where}: each choice must be a number, a string, true/false or null (Optuna stores no "
                      f"other), got {odd[0]!r}; for a list such as widths, search each of its items")
        return CategoricalDistribution(spec["choices"])
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise bad(f"{where}: expected {{low, high}} (with log: true or step) or {{choices: [...]}}, got {spec!r}")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if any(_is_number_text(v) for v in (low, high)) else ""
        raise bad(f"{where}: low and high must be numbers, got {low!r} and {high!r}{hint}")
    if not all(math.isfinite(v) for v in (low, high)):
        raise bad(f"{where}: low and high must be finite numbers, got {low} and {high}")
    if step is not None and (not isinstance(step, int | float) or isinstance(step, bool) or step <= 0 or log):
        raise bad(f"{where}: step must be a positive number, without log: true, got {step!r}")
    if low >= high:
        raise bad(f"{where}: empty or inverted range: low {low} must be below high {high}")
    if log and low <= 0:
        raise bad(f"{where}: a log range needs low > 0, got {low}")
    if isinstance(low, int) and isinstance(high, int) and not isinstance(step, float):
        return optuna.distributions.IntDistribution(low, high, log=log, step=step or 1)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_fit_args(study: Study, bad: Refuse) -> None:
    """Parse the fit configs of the trials at the two ends of the space (each parameter at its low end or first
    choice, then at its high end or last choice), and of each choice in between (the rest at their low end), and
    check their values, without running anything, so that an unknown key, a value of the wrong type or values that
    cannot run together are reported before any training."""
    categorical = {k: d.choices for k, d in study.space.items() if isinstance(d, CategoricalDistribution)}
    checked = [{k: categorical[k][end] if k in categorical else (d.low, d.high)[end] for k, d in study.space.items()}
               for end in (0, -1)] if study.space else [{"seed": study.seeds[0]}]
    checked += [{**checked[0], k: choice} for k, choices in categorical.items() for choice in choices[1:-1]]
    for params in checked:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                fit.check_config(study.fit_args(params))
        except FashionCNNError as err:  # the parser's error or a value check
            raise bad(f"the fit config it makes is refused: {one_line(err)}") from None

"""fit's configuration: the shipped config names, the checks a config's files and values must pass before any work,
and the precision this machine trains in."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace

from fashion_cnn.datamodule import check_data_options
from fashion_cnn.errors import FashionCNNError, OptionsError
from fashion_cnn.module import check_optimizer_options

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "seed.yaml"  # the notebook's experiment, read beneath every --config
SAVE_DIR_OPTION = "--trainer.logger.init_args.save_dir"  # where fit's runs go: <save_dir>/lightning_logs/version_N
MAX_SEED = 2**32 - 1  # Lightning seeds numpy too, whose seeds are 32-bit
_SAID: set[str] = set()  # notices this process has printed: a study's trials do not repeat them


class ConfigError(FashionCNNError):
    """A configuration that cannot work; reported as one line before any work starts."""


def shipped_configs() -> list[str]:
    """The names ``--config`` takes for the shipped configs (seed, fast, ...), as in ``fashion_cnn/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_names(argv: list[str]) -> list[str]:
    """Let ``--config fast`` (or ``-c fast``) mean the shipped ``configs/fast.yaml``; a name that is neither that nor
    a file is one line. A config given inline (``--config '{model: {lr: 0.1}}'``) is left to LightningCLI."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = (out[i + 1], None) if arg in ("--config", "-c") and i + 1 < len(out) else (None, None)
        if arg.startswith("--config="):
            value, prefix = arg.split("=", 1)[1], "--config="
        if value and Path(value).is_file():
            _check_config_file(Path(value))
        if not value or Path(value).exists() or not isinstance(_yaml_value(value), str):
            continue
        shipped = CONFIG_DIR / f"{value}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"--config {value}: no such file, and not a shipped config (one of "
                              f"{', '.join(shipped_configs())}); give one of those names or a YAML file's path")
        if prefix:
            out[i] = prefix + str(shipped)
        else:
            out[i + 1] = str(shipped)
    return out


def _check_config_file(path: Path) -> None:
    """Refuse a ``--config`` file jsonargparse would stop on with a traceback or a bare "Unexpected config": one
    that is not UTF-8 text (a checkpoint, or YAML saved as UTF-16), an empty one, and one with an empty section
    (``data:`` with nothing under it)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file; give a YAML config saved as UTF-8 (a checkpoint "
                          f"goes to --ckpt_path)") from None
    except yaml.YAMLError:
        return  # jsonargparse says where
    if values is None:
        raise ConfigError(f"--config {path}: the file has no settings (it is empty, or only comments); give a YAML "
                          f"mapping such as `model: {{lr: 0.1}}`")
    empty = [key for key in ("trainer", "model", "data") if isinstance(values, dict) and key in values
             and values[key] is None]
    if empty:
        raise ConfigError(f"--config {path}: `{empty[0]}:` has nothing under it; give its options, or leave it out")


def _yaml_value(text: str) -> object:
    """What YAML makes of ``text`` (a plain word stays a str; a mapping is an inline config); None if it cannot."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def check_values(config: Namespace) -> None:
    """Refuse a parsed fit config (a jsonargparse Namespace) whose values parse but cannot run together; checks
    only the values, so a study checks its trials' configs with it before training any."""
    max_epochs = config.trainer.max_epochs
    if max_epochs is not None and max_epochs <= 0:
        raise OptionsError(f"trainer.max_epochs must be positive, got {max_epochs}")
    seed = config.seed_everything
    if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise OptionsError(f"seed_everything must be between 0 and {MAX_SEED} (numpy's seeds), got {seed}")
    check_final_shift(config.model.final_shift, config.data.augment, config.data.max_shift)
    check_optimizer_options(config.model.nesterov, config.model.momentum)
    for key in ("optimizer", "lr_scheduler"):  # LightningCLI's own options, null in every config.yaml
        if config.get(key) is not None:  # Lightning would replace the module's optimizer, ignoring model.lr
            raise OptionsError(f"--{key} is not used by this project (it would silently replace the recipe's "
                               f"optimizer and schedule): set model.lr, model.momentum, model.nesterov, "
                               f"model.weight_decay and model.schedule instead")
    check_data_options(**{k: config.data[k] for k in ("augment", "erase", "flip", "test", "val_size")})


def check_final_shift(final_shift: int, augment: bool, max_shift: int) -> None:
    """Refuse final-test views shifted further than training shifted its images: such views are images the network
    never saw, which lower the final test (2-pixel views after 1-pixel training did, docs/results.md) while the
    per-epoch tests, which leave them out, would not show it. ``evaluate --shift`` stays free to try them."""
    if final_shift and not augment:
        raise OptionsError(f"model.final_shift={final_shift} is for networks trained with random shifts, and "
                           f"data.augment is false: add data.augment=true, or set model.final_shift to 0")
    if final_shift > max_shift:
        raise OptionsError(f"model.final_shift={final_shift} is larger than training's random shifts "
                           f"(data.max_shift={max_shift}): set model.final_shift to at most {max_shift}")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bfloat16."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # another architecture's build, or one without these probes: assume not
        return False


def precision_for_this_cpu(precision: str | int | None, accelerator: str) -> str | int | None:
    """``precision``, or ``32-true`` where it is bfloat16 (or 16-mixed, which Lightning runs as bfloat16 there) on a
    CPU without native bfloat16 (no AVX512-BF16 or AMX): there oneDNN emulates it, several times slower than float32
    (``python -m benchmarks.net_step --precision bf16-mixed``), so the presets that ask for bfloat16 to be fast
    (fast, strong) would be the slowest."""
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()  # what accelerator "auto" picks first
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not gpu)
    # Lightning runs 16-mixed on a CPU as bf16-mixed (it has no float16 autocast there)
    bf16 = str(precision).startswith("bf16") or str(precision) in ("16", "16-mixed")
    return "32-true" if bf16 and on_cpu and not cpu_has_bfloat16() else precision


def use_this_cpus_precision(trainer: Namespace, prog: str, say: bool = True) -> None:
    """Set the trainer config's precision to :func:`precision_for_this_cpu`'s, saying so once per process when it
    changes (``say``: False in a process that logs nothing, a DDP rank above 0)."""
    precision = precision_for_this_cpu(trainer.precision, str(trainer.accelerator))
    notice = (f"{prog}: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where {trainer.precision} is "
              f"emulated and several times slower: training in {precision} instead")
    if precision != trainer.precision and say and notice not in _SAID:
        _SAID.add(notice)
        print(notice, file=sys.stderr)
    trainer.precision = precision

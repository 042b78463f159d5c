"""Train: ``python -m fashion_cnn.fit [--config seed|fast|strong|FILE] [--trainer.max_epochs 5] [--model.lr 0.05] ...``

Built on LightningCLI: every argument of the Trainer, of :class:`~fashion_cnn.module.FashionClassifier`
(``--model.*``) and of :class:`~fashion_cnn.datamodule.FashionMNISTDataModule` (``--data.*``) can be set on
the command line or in a YAML file; ``--help`` lists them and ``--print_config`` shows the resolved config.
The shipped ``configs/seed.yaml`` (the notebook's experiment) is always read first; ``--config`` files override it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fashion_cnn.data_files import DataError
from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.module import FashionClassifier, TrainingDiverged

CONFIG_DIR = Path(__file__).parent / "configs"
PROG = "python -m fashion_cnn.fit"


class ConfigError(ValueError):
    """A configuration that cannot work; reported as one line before any work starts."""


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad argument or config as one line (plus a pointer to --help) instead of the whole usage text."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        first = " ".join(str(message).split("\n")[0].split())
        sys.stderr.write(f"{PROG}: error: {first}\n  (see `{PROG} --help`, or --print_config for the full config)\n")
        raise SystemExit(2)


class FashionCLI(LightningCLI):
    """LightningCLI with the project's defaults and its checkpoint policy."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training from this checkpoint")

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        if trainer.max_epochs is not None and trainer.max_epochs <= 0:
            raise ConfigError(f"trainer.max_epochs must be positive, got {trainer.max_epochs}")

    def instantiate_trainer(self, **kwargs):
        # Keep the best epoch by validation accuracy when a validation split exists; otherwise by test accuracy,
        # which is the notebook's protocol (it has no validation split) and is said so in the README.
        split = "val" if self.datamodule.hparams.val_size else "test"
        best = ModelCheckpoint(monitor=f"{split}/acc", mode="max", save_last=True,
                               filename=f"best-epoch{{epoch:02d}}-{split}_acc{{{split}/acc:.4f}}",
                               auto_insert_metric_name=False)
        trainer = self._get(self.config_init, "trainer", default={})
        configured = trainer.get("callbacks") or []
        if trainer.get("enable_progress_bar") is False:  # so that flag also switches off the configured bar
            configured = [c for c in configured if not isinstance(c, ProgressBar)]
        kwargs["callbacks"] = [*configured, best]
        return super().instantiate_trainer(**kwargs)


def resolve_config_names(argv: list[str]) -> list[str]:
    """Let ``--config fast`` mean the shipped ``configs/fast.yaml``."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = (out[i + 1], None) if arg == "--config" and i + 1 < len(out) else (None, None)
        if arg.startswith("--config="):
            value, prefix = arg.split("=", 1)[1], "--config="
        if value and not Path(value).exists() and (CONFIG_DIR / f"{value}.yaml").is_file():
            shipped = str(CONFIG_DIR / f"{value}.yaml")
            if prefix:
                out[i] = prefix + shipped
            else:
                out[i + 1] = shipped
    return out


def main(argv: list[str] | None = None) -> int:
    argv = resolve_config_names(sys.argv[1:] if argv is None else argv)
    # argv is sys.argv with shipped config names resolved; Lightning would warn that both are given.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        cli = FashionCLI(
            FashionClassifier,
            FashionMNISTDataModule,
            run=False,
            args=argv,
            parser_class=OneLineErrorParser,
            parser_kwargs={"prog": PROG, "default_config_files": [str(CONFIG_DIR / "seed.yaml")]},
        )
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    except (DataError, ConfigError, TrainingDiverged, MisconfigurationException) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

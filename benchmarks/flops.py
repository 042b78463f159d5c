"""Floating-point operations per config: what a training run computes, apart from how fast a machine computes it.

    python -m benchmarks.flops [CONFIG ...] [--json benchmarks/results/flops.json]

CONFIG is a shipped config (default: all of them), a fit config file (a run's ``config.yaml``, say) or a study file
(its base config with its overrides: ``studies/strong12_repeats.yaml``). For each, the config's network is built as
fit builds it (``model.net`` in a ``FashionClassifier`` with the config's ``channels_last``), in float32, and
``torch.utils.flop_counter.FlopCounterMode`` counts one training step at the config's batch size: the module's
forward, the training loss (with its label smoothing) and its backward. Training is that per image times the images
trained on: ``max_epochs`` times the 60,000 training images less ``data.val_size``, in ``ceil(images / batch_size)``
steps an epoch (the DataLoader keeps the last, smaller batch: no ``drop_last``). Evaluation is counted apart, forward
only: the per-epoch tests (and validation on a held-out split), each over the test-time views of ``model.eval_mirror``
(2 with it); the final test, which adds ``model.final_shift``'s shifted views (5 without the mirror, 10 with it:
:func:`fashion_cnn.nets.views`); and ``PredictionPictures``' re-predictions of the test set (every ``every_n_epochs``
epochs and the last, with the per-epoch tests' views).

What FlopCounterMode counts is the arithmetic of its registered operations: convolutions, matrix products and their
backward passes, at 2 FLOPs a multiply-add. BatchNorm, ReLU, pooling, the loss, the optimizer's update and the data's
augmentation are elementwise work it leaves out; it does not depend on the precision (bf16-mixed computes the same
products), the memory format or the machine. A backward pass counts about twice its forward (the gradient of each
layer's input and of its weights), less the first convolution's input gradient, which nothing needs.

The step is counted on the ``meta`` device (shapes only, no arithmetic: well under a second even at the gpu preset's
batch of 512), and checked against a count on real CPU tensors at another batch size, which must scale to it
exactly: the count is linear in the batch, so a training run's total is its per-image count times its images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench import circumstances
from fashion_cnn import study_file
from fashion_cnn.callbacks import PredictionPictures
from fashion_cnn.checkpoints import build_net
from fashion_cnn.config import CONFIG_DIR, shipped_configs
from fashion_cnn.data_files import OFFICIAL
from fashion_cnn.module import FashionClassifier
from fashion_cnn.nets import views

TRAIN_IMAGES = OFFICIAL["train-images-idx3-ubyte"].count  # 60,000
TEST_IMAGES = OFFICIAL["t10k-images-idx3-ubyte"].count  # 10,000
ORDER = ("seed", "fast", "tiny", "quick", "strong", "gpu")  # the README's order: by network, then by recipe
REFERENCE = "strong"  # the goals are fractions of strong's training FLOPs
CHECK_BATCH = 3  # the real-tensor count's batch: small, so the check costs little, and unlike any config's
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what decides a CPU's speed at these counts
# Lightning's default when a config names none (seed.yaml sets 0)
SANITY_STEPS_DEFAULT = 2


def config_values(config: str | Path) -> tuple[str, dict[str, Any]]:
    """A row name and the values fit would train with: a shipped config's name, a fit config file, or a study file
    (its base config with its overrides), each read on top of seed.yaml (:func:`fashion_cnn.study_file.fit_values`)."""
    if isinstance(config, str) and config in shipped_configs():
        return config, study_file.fit_values(CONFIG_DIR / f"{config}.yaml")
    path = Path(config)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(raw, dict) and ("repeat" in raw or "search" in raw):  # a study file
        study = study_file.load(path)
        return study.name.removesuffix("_repeats"), study_file.fit_values(study.base, study.overrides)
    return path.stem, study_file.fit_values(path)


def build_model(values: dict[str, Any], device: str | torch.device = "cpu") -> FashionClassifier:
    """The config's network inside the module, as fit builds it (the module puts it in channels-last), in float32."""
    model_args = {k: v for k, v in values["model"].items() if k not in ("net", "compile")}  # compiling counts the same
    with warnings.catch_warnings():  # Lightning's advice to leave `net` out of the hyperparameters: not ours to take
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
        model = FashionClassifier(net=build_net(values["model"]["net"]), **model_args)
    return model.to(device)


def count(fn: Callable[[], object]) -> int:
    """The FLOPs FlopCounterMode counts while ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(model: FashionClassifier, batch: int, device: str | torch.device = "meta") -> tuple[int, int]:
    """FLOPs of one training step of ``batch`` images: (forward with the loss, forward and backward)."""
    model.train()
    x = torch.randn(batch, 1, 28, 28, device=device)  # the module makes it channels-last, as in training
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y, label_smoothing=model.hparams.label_smoothing)
        forward = counter.get_total_flops()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def eval_flops(model: FashionClassifier, batch: int, mirror: bool, shift: int,
               device: str | torch.device = "meta") -> tuple[int, int]:
    """(FLOPs, views) of evaluating ``batch`` images as the module's ``_evaluate`` does: forward only, in eval mode,
    over each of :func:`fashion_cnn.nets.views`."""
    model.eval()
    x = torch.randn(batch, 1, 28, 28, device=device)
    each = views(x, mirror, shift, 0.0)
    with torch.no_grad():
        flops = count(lambda: sum(model(view) for view in each))
    return flops, len(each)


def per_image(flops: int, batch: int, what: str) -> int:
    """``flops`` of ``batch`` images, per image: whole, since every counted operation is linear in the batch."""
    if flops % batch:
        raise ArithmeticError(f"{what}: {flops} FLOPs do not divide by the batch of {batch}: not linear in it")
    return flops // batch


def network_name(net: dict[str, Any] | None) -> str:
    """``SeedCNN``, ``StrongCNN 16-64-128``: the class and, for StrongCNN, its widths."""
    name = (net or {}).get("class_path", "fashion_cnn.nets.SeedCNN").rpartition(".")[2]
    widths = ((net or {}).get("init_args") or {}).get("widths")
    return f"{name} {'-'.join(map(str, widths))}" if widths else name


def picture_epochs(values: dict[str, Any], epochs: int) -> int:
    """How many times ``PredictionPictures`` (if the config has it) re-predicts the test set: every
    ``every_n_epochs`` epochs and at the last."""
    for callback in values["trainer"].get("callbacks") or []:
        if isinstance(callback, dict) and callback.get("class_path", "").rpartition(".")[2] == "PredictionPictures":
            every = PredictionPictures(**(callback.get("init_args") or {})).every_n_epochs
            return sum(1 for epoch in range(1, epochs + 1) if epoch % every == 0 or epoch == epochs)
    return 0


def refuse_unmodelled(trainer: dict[str, Any]) -> None:
    """Trainer settings that would change the count in ways this module does not follow: a ValueError, not a wrong
    figure."""
    odd = {key: trainer.get(key) for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
           if trainer.get(key) not in (None, 1.0)}
    if trainer.get("max_steps") not in (None, -1):
        odd["max_steps"] = trainer["max_steps"]
    if trainer.get("check_val_every_n_epoch") not in (None, 1):
        odd["check_val_every_n_epoch"] = trainer["check_val_every_n_epoch"]
    for key in ("devices", "num_nodes"):  # one process: each would train its own shard
        if trainer.get(key) not in (None, 1, "1", "auto"):
            odd[key] = trainer[key]
    if trainer.get("max_epochs") is None:
        odd["max_epochs"] = None
    if odd:
        raise ValueError(f"cannot count a run with {odd}: only whole epochs on one device are counted")


def training_flops(config: str | Path, train_images: int = TRAIN_IMAGES, test_images: int = TEST_IMAGES
                   ) -> dict[str, Any]:
    """The FLOPs of a config's training run and, apart, of its evaluation (see the module's docstring); every count
    a whole number of FLOPs, ``*_mflop``/``*_tflop`` the same in millions and 10^12."""
    name, values = config_values(config)
    trainer, data, model_config = values["trainer"], values["data"], values["model"]
    refuse_unmodelled(trainer)
    batch, eval_batch = data["batch_size"], data["eval_batch_size"]
    epochs, val_images = trainer["max_epochs"], data.get("val_size") or 0
    images = train_images - val_images
    torch.manual_seed(0)
    model = build_model(values, "meta")
    forward, step = step_flops(model, batch)
    # the same on real tensors at another batch: linear in the batch, and the meta device counts what the CPU runs
    cpu_model = build_model(values, "cpu")
    check_forward, check_step = step_flops(cpu_model, CHECK_BATCH, "cpu")
    if (check_forward * batch, check_step * batch) != (forward * CHECK_BATCH, step * CHECK_BATCH):
        raise ArithmeticError(f"{name}: {step} FLOPs a step of {batch} (meta) but {check_step} of {CHECK_BATCH} "
                              f"(cpu): the count does not scale with the batch")
    forward_image, step_image = per_image(forward, batch, name), per_image(step, batch, name)
    steps_per_epoch = math.ceil(images / batch)

    mirror, final_shift = bool(model_config.get("eval_mirror")), int(model_config.get("final_shift") or 0)
    epoch_views, final_views = (eval_flops(model, eval_batch, mirror, shift) for shift in (0, final_shift))
    epoch_image, final_image = per_image(epoch_views[0], eval_batch, name), per_image(final_views[0], eval_batch, name)
    tested = data.get("test", True)
    eval_sets = {"val": val_images, "test": test_images if tested else 0}
    per_epoch = sum(eval_sets.values())
    sanity_steps = trainer.get("num_sanity_val_steps", SANITY_STEPS_DEFAULT)
    sanity = sum(n if sanity_steps == -1 else min(n, sanity_steps * eval_batch) for n in eval_sets.values())
    pictures = picture_epochs(values, epochs) if tested else 0
    evaluation = {  # images, views and FLOPs of each kind of evaluation pass
        "per_epoch": {"passes": epochs, "images": per_epoch, "views": epoch_views[1],
                      "flops": epochs * per_epoch * epoch_image},
        "final_test": {"passes": int(tested), "images": test_images, "views": final_views[1],
                       "flops": int(tested) * test_images * final_image},
        "pictures": {"passes": pictures, "images": test_images, "views": epoch_views[1],
                     "flops": pictures * test_images * epoch_image},
        "sanity": {"passes": int(bool(sanity)), "images": sanity, "views": epoch_views[1],
                   "flops": sanity * epoch_image},
    }
    training = epochs * images * step_image  # every step's images: the last, smaller batch counts what it holds
    evaluation_total = sum(e["flops"] for e in evaluation.values())
    return {
        "config": name, "network": network_name(model_config.get("net")),
        "params": sum(p.numel() for p in cpu_model.net.parameters()),
        "batch_size": batch, "epochs": epochs, "train_images": images, "steps_per_epoch": steps_per_epoch,
        "steps": epochs * steps_per_epoch, "last_batch": images - (steps_per_epoch - 1) * batch,
        "step_flops": step, "forward_flops_per_image": forward_image,
        "backward_flops_per_image": step_image - forward_image, "flops_per_image": step_image,
        "mflop_per_image": step_image / 1e6, "training_flops": training, "training_tflop": training / 1e12,
        "eval_forward_flops_per_image": epoch_image, "final_test_flops_per_image": final_image,
        "evaluation": evaluation, "evaluation_flops": evaluation_total, "evaluation_tflop": evaluation_total / 1e12,
    }


def tflop(value: float) -> str:
    """TFLOP to print: 2 decimals below 10, else 1."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(rows: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """The markdown table ``main`` prints."""
    lines = ["| config | network | params | MFLOP/image (fwd+bwd) | steps | training TFLOP | evaluation TFLOP | "
             f"training / `{reference['config']}`'s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r["training_flops"] / reference["training_flops"]
        lines.append(f"| `{r['config']}` | {r['network']} | {r['params']:,} | {r['mflop_per_image']:.2f} | "
                     f"{r['steps']:,} ({r['epochs']} x {r['steps_per_epoch']}) | {tflop(r['training_tflop'])} | "
                     f"{tflop(r['evaluation_tflop'])} | {100 * share:.1f}% |")
    return "\n".join(lines)


def cpu_flags() -> list[str] | None:
    """Which of :data:`CPU_FLAGS` this CPU has, from /proc/cpuinfo (None: not Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.partition(":")[2].split() for line in info.splitlines() if line.startswith("flags")), [])
    return [flag for flag in CPU_FLAGS if flag in flags]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.flops``: print the table of FLOPs per config (and write it as JSON); its exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__.split("\n")[0])
    shipped = [c for c in ORDER if c in shipped_configs()] + [c for c in shipped_configs() if c not in ORDER]
    p.add_argument("configs", nargs="*", default=shipped,
                   help="shipped configs, fit config files or study files (default: every shipped config)")
    p.add_argument("--json", type=Path, help="also write every count and the circumstances here")
    args = p.parse_args(argv)
    record: dict[str, Any] = {**circumstances(), "cpu_flags": cpu_flags()}
    rows = [training_flops(c) for c in args.configs]
    reference = next((r for r in rows if r["config"] == REFERENCE), None) or training_flops(REFERENCE)
    text = table(rows, reference)
    print(text)
    if args.json:
        record.update(reference=reference["config"], configs={r["config"]: r for r in rows}, table=text)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

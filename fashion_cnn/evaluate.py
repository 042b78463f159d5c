"""Evaluate a checkpoint on the test set: ``python -m fashion_cnn.evaluate --ckpt_path PATH|best|last``.

Prints the test accuracy and loss (the same numbers as the training run's ``final/test_acc``/``final/test_loss``
for that checkpoint), a per-class precision/recall/F1 table and the most confused pairs of classes, and writes
``metrics.json``, ``confusion_matrix.png`` and ``mistakes.png`` into the checkpoint's run directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fashion_cnn.analysis import Predictions, confusion_matrix, most_confused, per_class_scores
from fashion_cnn.analysis import predict as predict_logits
from fashion_cnn.checkpoints import Loaded, load
from fashion_cnn.commands import CommandError, add_checkpoint_arguments, parser, run
from fashion_cnn.data_files import CLASSES, load_split, locate
from fashion_cnn.figures import evaluation_figures, save

PROG = "python -m fashion_cnn.evaluate"


def predictions_on_test_set(loaded: Loaded, data_dir: str | None = None,
                            mirror: bool = False) -> tuple[Predictions, torch.Tensor, Path]:
    """The checkpoint's predictions on the test split, found like training found it (or under ``data_dir``).

    Batches have the training run's ``eval_batch_size`` and go through the datamodule's own ``normalize``, so the
    inputs are bit-for-bit those of the run's final test. ``mirror`` averages in each image's mirror image (as a
    run trained with ``model.eval_mirror`` always does).
    """
    hp = loaded.datamodule.hparams
    directory = locate(data_dir or hp.data_dir, allow_download=hp.download)
    images, labels = load_split(directory, "test", hp.verify)
    preds = predict_logits(loaded.net, images, labels, loaded.datamodule.normalize, batch_size=hp.eval_batch_size,
                           mirror=mirror)
    return preds, images, directory


def metrics(loaded: Loaded, preds: Predictions, data_dir: Path, mirror: bool = False) -> dict:
    """Everything the command reports, as JSON-ready values."""
    cm = confusion_matrix(preds.labels, preds.predicted, len(CLASSES))
    scores = per_class_scores(cm)
    return {
        "checkpoint": str(loaded.path),
        "data_dir": str(data_dir),
        "mirror": mirror,
        "shift": loaded.shift,  # shifted views averaged in (model.final_shift), pixels
        "num_images": len(preds.labels),
        "test_acc": preds.accuracy,
        "test_loss": preds.loss,
        "per_class": {name: {key: float(values[i]) if key != "support" else int(values[i])
                             for key, values in scores.items()} for i, name in enumerate(CLASSES)},
        "macro_f1": float(scores["f1"].mean()),
        "most_confused": [{"true": CLASSES[t], "predicted": CLASSES[p], "count": n} for t, p, n in most_confused(cm)],
        "classes": list(CLASSES),
        "confusion_matrix": cm.tolist(),  # rows: true class, columns: predicted class
    }


def summary(result: dict) -> str:
    """The human-readable report."""
    n, acc = result["num_images"], result["test_acc"]
    width = max(len(c) for c in CLASSES)
    lines = [f"checkpoint:    {result['checkpoint']}",
             f"test set:      {n} images from {result['data_dir']}"
             + (", each averaged with its mirror image" if result.get("mirror") else "")
             + (f", and with its views shifted by {result['shift']} pixel(s)" if result.get("shift") else ""),
             f"test accuracy: {100 * acc:.2f}% ({round(acc * n)}/{n})",
             f"test loss:     {result['test_loss']:.4f}",
             "",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for name, s in result["per_class"].items():
        lines.append(f"{name:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}")
    lines += [f"{'macro F1':<{width}}  {'':9}  {'':6}  {result['macro_f1']:5.3f}", "",
              "most confused (true -> predicted: images):"]
    lines += [f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in result["most_confused"]] or ["  none"]
    return "\n".join(lines)


def write_outputs(result: dict, preds: Predictions, images: torch.Tensor, out_dir: Path, tag: str = "") -> list[Path]:
    """metrics{tag}.json, confusion_matrix{tag}.png and mistakes{tag}.png in ``out_dir``."""
    title = f"{Path(result['checkpoint']).name}: test accuracy {100 * result['test_acc']:.2f}%"
    matrix, mistakes = evaluation_figures(torch.tensor(result["confusion_matrix"]), preds, images, title)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"metrics{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
        return [out_dir / f"metrics{tag}.json", save(matrix, out_dir / f"confusion_matrix{tag}.png"),
                save(mistakes, out_dir / f"mistakes{tag}.png")]
    except OSError as err:
        raise CommandError(f"cannot write the results to {out_dir} ({err.strerror or err}); "
                           f"choose a writable directory with --out_dir") from None


def main(argv: list[str] | None = None) -> int:
    p = parser("evaluate", "Evaluate a checkpoint on the FashionMNIST test set.")
    add_checkpoint_arguments(p)
    p.add_argument("--data_dir", default=None, help="where the dataset is (default: the training run's data_dir)")
    p.add_argument("--out_dir", default=None, help="where to write the results (default: the checkpoint's run dir)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time augmentation: average each image's logits with its mirror image's (what a run "
                        "trained with model.eval_mirror does anyway)")
    args = p.parse_args(argv)

    def body() -> int:
        loaded = load(args.ckpt_path, args.logs_dir)
        preds, images, directory = predictions_on_test_set(loaded, args.data_dir, args.mirror)
        result = metrics(loaded, preds, directory, args.mirror or loaded.mirrored)
        print(summary(result))
        out_dir = Path(args.out_dir) if args.out_dir else loaded.run_dir
        # --mirror on a run that did not test that way: *_mirror.* files, so the run's own evaluation is kept
        tag = "_mirror" if args.mirror and not loaded.mirrored else ""
        written = write_outputs(result, preds, images, out_dir, tag)
        print(f"\nwrote {', '.join(p.name for p in written)} to {out_dir}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

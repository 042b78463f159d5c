"""Evaluate a checkpoint on the test set: ``python -m fashion_cnn.evaluate --ckpt_path PATH|best|last``.

Prints the test accuracy and loss (the same numbers as the training run's ``final/test_acc``/``final/test_loss``
for that checkpoint, up to bfloat16 rounding for runs that tested in it: this computes in float32), a per-class
precision/recall/F1 table and the most confused pairs of classes, and writes ``metrics.json``,
``confusion_matrix.png`` and ``mistakes.png`` into the checkpoint's run directory.

``--split val`` evaluates on the run's validation split instead (for choosing, say, test-time views without
looking at the test set); ``--mirror`` and ``--shift N`` change the test-time views. Either writes its files under a tag
(``metrics_val_shift1.json``, ...), so the run's own evaluation is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fashion_cnn.analysis import Predictions, confusion_matrix, most_confused, per_class_scores, predictions
from fashion_cnn.checkpoints import Loaded, load
from fashion_cnn.commands import CommandError, add_checkpoint_arguments, cannot_write, parser, run
from fashion_cnn.data_files import CLASSES, candidate_dirs, load_split, locate
from fashion_cnn.datamodule import hold_out
from fashion_cnn.figures import evaluation_figures, save

PROG = "python -m fashion_cnn.evaluate"


def predictions_on(loaded: Loaded, split: str = "test",
                   data_dir: str | None = None) -> tuple[Predictions, torch.Tensor, Path]:
    """The checkpoint's predictions on ``split`` (``test``, or ``val``: the run's own validation split), with the
    dataset found like training found it (or under ``data_dir``).

    Batches have the training run's ``eval_batch_size`` and go through the datamodule's own ``normalize``, so the
    inputs are bit-for-bit those of the run's final test, through the test-time views ``loaded.net`` averages
    (other views: :meth:`~fashion_cnn.checkpoints.Loaded.with_views`).
    """
    hp = loaded.datamodule.hparams
    if split == "val" and not hp.val_size:
        raise CommandError(f"{loaded.path} was trained without a validation split (data.val_size 0), so every "
                           f"training image was seen; evaluate it on --split test")
    directory = locate(data_dir or hp.data_dir, allow_download=hp.download)
    if data_dir is not None and directory not in [d for label, d in candidate_dirs(data_dir) if label == "data_dir"]:
        # locate went on to another copy ($FASHION_MNIST_DIR's, Debian's): not the one the user named
        raise CommandError(f"--data_dir {data_dir} holds no FashionMNIST copy (the four idx files, in it or in its "
                           f"FashionMNIST/raw/); point it at the directory that holds them, or leave it out for "
                           f"the run's own ({hp.data_dir})")
    images, labels = load_split(directory, "train" if split == "val" else "test", hp.verify)
    if split == "val":
        if loaded.train_images not in (None, len(labels)):  # the same indices would pick other images
            raise CommandError(f"{loaded.path} held its validation split out of {loaded.train_images} training images, "
                               f"and {directory} has {len(labels)}: evaluate it on the copy it trained on "
                               f"(--data_dir {hp.data_dir})")
        val_idx, _ = hold_out(len(labels), hp.val_size, hp.split_seed)
        images, labels = images[val_idx], labels[val_idx]
    preds = predictions(loaded.net, images, labels, loaded.datamodule.normalize, batch_size=hp.eval_batch_size)
    return preds, images, directory


def metrics(loaded: Loaded, preds: Predictions, data_dir: Path, split: str = "test") -> dict:
    """Everything the command reports, as JSON-ready values (``test_acc``, or ``val_acc`` for the val split, ...)."""
    cm = confusion_matrix(preds.labels, preds.predicted, len(CLASSES))
    scores = per_class_scores(cm)
    return {
        "checkpoint": str(loaded.path),
        "checkpoint_epoch": loaded.epoch,  # which weights: the run may have gone on since
        "checkpoint_step": loaded.global_step,
        "data_dir": str(data_dir),
        "split": split,
        "mirror": loaded.mirrored,
        "shift": loaded.shift,  # pixels of the shifted views averaged in (0: none)
        "num_images": len(preds.labels),
        f"{split}_acc": preds.accuracy,
        f"{split}_loss": preds.loss,
        "per_class": {name: {key: float(values[i]) if key != "support" else int(values[i])
                             for key, values in scores.items()} for i, name in enumerate(CLASSES)},
        "macro_f1": float(scores["f1"].mean()),
        "most_confused": [{"true": CLASSES[t], "predicted": CLASSES[p], "count": n} for t, p, n in most_confused(cm)],
        "classes": list(CLASSES),
        "confusion_matrix": cm.tolist(),  # rows: true class, columns: predicted class
    }


def summary(result: dict) -> str:
    """The human-readable report."""
    split = result["split"]
    n, acc = result["num_images"], result[f"{split}_acc"]
    width = max(len(c) for c in CLASSES)
    lines = [f"{'checkpoint:':15}{result['checkpoint']}",
             f"{split + ' set:':15}{n} images from {result['data_dir']}"
             + (", each averaged with its mirror image" if result["mirror"] else "")
             + (f", {'and ' if result['mirror'] else ''}averaged with its views shifted by {result['shift']} "
                f"pixel(s)" if result["shift"] else ""),
             f"{split + ' accuracy:':15}{100 * acc:.2f}% ({round(acc * n)}/{n})",
             f"{split + ' loss:':15}{result[f'{split}_loss']:.4f}",
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
    split = result["split"]
    title = f"{Path(result['checkpoint']).name}: {split} accuracy {100 * result[f'{split}_acc']:.2f}%"
    matrix, mistakes = evaluation_figures(torch.tensor(result["confusion_matrix"]), preds, images, title)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"metrics{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
        return [out_dir / f"metrics{tag}.json", save(matrix, out_dir / f"confusion_matrix{tag}.png"),
                save(mistakes, out_dir / f"mistakes{tag}.png")]
    except OSError as err:
        raise cannot_write(out_dir, err, "--out_dir") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.evaluate``: its exit status (:mod:`fashion_cnn.commands` lists them)."""
    p = parser(PROG, "Evaluate a checkpoint on the FashionMNIST test set, or on its run's validation split.")
    add_checkpoint_arguments(p)
    p.add_argument("--data_dir", default=None, help="where the dataset is (default: the training run's data_dir)")
    p.add_argument("--out_dir", default=None, help="where to write the results (default: the checkpoint's run dir)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="val: the run's own validation split (data.val_size images it held out of training)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time augmentation: average each image's logits with its mirror image's (what a run "
                        "trained with model.eval_mirror does anyway)")
    p.add_argument("--shift", type=int, default=None, choices=range(5), metavar="{0..4}",
                   help="test-time augmentation: also average in each image shifted by this many pixels down, up, "
                        "right and left (0: no shifted views; default: the run's own model.final_shift)")
    args = p.parse_args(argv)

    def body() -> int:
        own = load(args.ckpt_path, args.logs_dir)
        loaded = own.with_views(args.mirror, args.shift)
        preds, images, directory = predictions_on(loaded, args.split, args.data_dir)
        result = metrics(loaded, preds, directory, args.split)
        print(summary(result))
        out_dir = Path(args.out_dir) if args.out_dir else loaded.run_dir
        # Anything but the run's own final test gets tagged files (*_val_mirror.json, ...): the run's own are kept
        tag = "".join(part for part, on in (("_val", args.split == "val"),
                                            ("_mirror", loaded.mirrored != own.mirrored),
                                            (f"_shift{loaded.shift}", loaded.shift != own.shift)) if on)
        written = write_outputs(result, preds, images, out_dir, tag)
        print(f"\nwrote {', '.join(p.name for p in written)} to {out_dir}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

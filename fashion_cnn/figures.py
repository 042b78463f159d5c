"""Matplotlib drawings: the TensorBoard callback's and ``evaluate``'s pictures, ``report``'s curves, and the canvas
and PNG writer ``compare`` draws on too.

Figures are built with the object-oriented API on an Agg canvas, never through pyplot: they render the same on a
headless training node, open no windows, and leave the caller's (e.g. a notebook's) pyplot backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fashion_cnn.analysis import Predictions, examples_to_show
from fashion_cnn.data_files import CLASSES

WRONG, RIGHT = "#c62828", "#2e7d32"  # red / green titles: mistakes stand out at a glance


def figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas (what every drawing here starts from)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering always goes through Agg
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 120 dpi (creating the directory) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def confusion_matrix_figure(cm: torch.Tensor, title: str) -> Figure:
    """Counts in every cell; colour = share of the true class's images, so small classes read as well as big ones
    and off-diagonal confusions are visible next to a dominant diagonal."""
    cm = cm.cpu()
    share = cm.double() / cm.sum(dim=1, keepdim=True).clamp(min=1)
    fig = figure(7.5, 6.5)
    ax = fig.add_subplot()
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(CLASSES)
    for true in range(n):
        for pred in range(n):
            count = int(cm[true, pred])
            if count:
                ax.text(pred, true, str(count), ha="center", va="center", fontsize=8,
                        color="white" if share[true, pred] > 0.5 else "black")
    ax.set_xticks(range(n), CLASSES, rotation=40, ha="right")
    ax.set_yticks(range(n), CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    return fig


def predictions_figure(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                       confidence: torch.Tensor, title: str) -> Figure:
    """A grid of uint8 images [K, 28, 28], 8 a row; each title is the prediction and its probability, in red with
    the true class underneath when wrong, in green when right."""
    columns = 8
    rows = max(1, math.ceil(len(images) / columns))
    fig = figure(1.45 * columns, 1.6 * rows + 0.4)
    for i, image in enumerate(images.cpu()):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        true, pred = int(labels[i]), int(predicted[i])
        text = f"{CLASSES[pred]} {100 * float(confidence[i]):.0f}%"
        if true != pred:
            text += f"\ntrue: {CLASSES[true]}"
        ax.set_title(text, fontsize=7, color=WRONG if true != pred else RIGHT)
        for spine in ax.spines.values():
            spine.set_color(WRONG if true != pred else RIGHT)
            spine.set_linewidth(2 if true != pred else 1)
    fig.suptitle(title)
    return fig


def learning_curves_figure(epochs: Sequence[int], loss: Sequence[float], acc: Sequence[float], run_label: str,
                           reference: Sequence[tuple[int, float, float]], reference_label: str,
                           title: str) -> Figure:
    """Test loss and accuracy (%) per epoch of a run, with reference (epoch, loss, accuracy %) points over it."""
    fig = figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ref_epochs = [e for e, _, _ in reference]
    ax_loss.plot(epochs, loss, "-", marker=".", label=run_label)
    ax_loss.plot(ref_epochs, [v for _, v, _ in reference], "o", mfc="none", label=reference_label)
    ax_acc.plot(epochs, [100 * a for a in acc], "-", marker=".", label=run_label)
    ax_acc.plot(ref_epochs, [a for _, _, a in reference], "o", mfc="none", label=reference_label)
    if acc:  # the last epoch, the run's reported figure: the highest one would be picked by test accuracy
        ax_acc.annotate(f"last {100 * acc[-1]:.2f}% (epoch {epochs[-1]})", (epochs[-1], 100 * acc[-1]),
                        xytext=(0, -28), textcoords="offset points", ha="right", fontsize=8,
                        arrowprops={"arrowstyle": "->", "lw": 0.8})
    for ax, name in ((ax_loss, "test loss (cross-entropy)"), (ax_acc, "test accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def evaluation_figures(cm: torch.Tensor, preds: Predictions, images: torch.Tensor, title: str, mistakes: int = 24,
                     correct: int = 8) -> tuple[Figure, Figure]:
    """The two pictures of an evaluation (training's TensorBoard images and evaluate's PNGs): the confusion matrix,
    and the most confident mistakes next to a few correct images; ``title`` names the images' split."""
    shown = examples_to_show(preds, mistakes, correct)
    matrix = confusion_matrix_figure(cm, f"Confusion matrix, {title}")
    grid = predictions_figure(images[shown], preds.labels[shown], preds.predicted[shown],
                              preds.probs[shown].max(dim=1).values,
                              f"Most confident mistakes (red, true class below) and some correct, {title}")
    return matrix, grid

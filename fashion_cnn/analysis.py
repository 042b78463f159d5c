"""Numbers about a model's predictions: logits, confusion matrix, per-class scores, mistakes worth showing.

Shared by the training-time picture callback, ``evaluate`` (on the test or the validation split), ``predict`` (on
a user's own images) and a study's winner, so all of them report the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Predictions:
    """A model's outputs on a labelled image set (all on the CPU)."""

    logits: torch.Tensor  # float32 [N, C]
    labels: torch.Tensor  # int64 [N]

    @property
    def probs(self) -> torch.Tensor:
        """Each image's class probabilities, [N, 10]."""
        return self.logits.softmax(dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        """Each image's predicted class, [N]."""
        return self.logits.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        """The fraction of images whose predicted class is their label."""
        return (self.predicted == self.labels).double().mean().item()

    @property
    def loss(self) -> float:
        """Mean cross-entropy, summed in float64 so it does not depend on the batch size used."""
        return F.cross_entropy(self.logits.double(), self.labels).item()


def predictions(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                normalize: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 250) -> Predictions:
    """:func:`logits` of uint8 ``images`` [N, 28, 28] with their ``labels``."""
    return Predictions(logits(net, images, normalize, batch_size), labels.cpu())


def logits(net: nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
           batch_size: int = 250) -> torch.Tensor:
    """Run ``net`` in eval mode over uint8 ``images`` [N, 28, 28], ``batch_size`` at a time, without gradients;
    float32 logits [N, 10] on the CPU. Test-time views: ``net`` a :class:`~fashion_cnn.nets.ViewAverage`."""
    weight = next(net.parameters())  # inputs in its device and dtype (float64 under fit's 64-true, say)
    was_training = net.training
    net.eval()  # dropout off; restored below, since the callback calls this in the middle of training
    try:
        with torch.inference_mode():
            chunks = [net(normalize(images[i : i + batch_size].to(weight.device)).to(weight.dtype)).float().cpu()
                      for i in range(0, len(images), batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(chunks)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true class, predicted class] (int64 [C, C])."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall (= per-class accuracy), F1 and support of each class from a confusion matrix."""
    cm = cm.double()
    hits, support, claimed = cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)
    precision = torch.where(claimed > 0, hits / claimed.clamp(min=1), 0.0)
    recall = torch.where(support > 0, hits / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.long()}


def most_confused(cm: torch.Tensor, k: int = 5) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal cells as (true class, predicted class, count), largest first; no zeros."""
    off = cm.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True, stable=True)
    n = cm.shape[0]
    return [(int(i) // n, int(i) % n, int(c)) for c, i in zip(counts[:k], flat[:k], strict=True) if c > 0]


def examples_to_show(preds: Predictions, mistakes: int = 24, correct: int = 8) -> torch.Tensor:
    """Indices of images for a picture: the most confident mistakes (the instructive ones), then a few correct ones
    spread over the set for contrast. Deterministic, so the same model gives the same picture."""
    confidence = preds.probs.max(dim=1).values
    wrong = (preds.predicted != preds.labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True, stable=True)][:mistakes]
    right = (preds.predicted == preds.labels).nonzero().flatten()
    n_right = min(len(right), correct + max(0, mistakes - len(wrong)))  # fill the grid when mistakes are few
    if n_right:
        right = right[torch.linspace(0, len(right) - 1, n_right).round().long()]
    return torch.cat([wrong, right[:n_right]])

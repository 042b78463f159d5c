"""The numbers behind the pictures and ``evaluate``: confusion matrix, per-class scores, pairs, examples."""

from __future__ import annotations

import torch

from fashion_cnn.analysis import Predictions, confusion_matrix, examples_to_show, most_confused, per_class_scores


def test_confusion_matrix_scores_and_most_confused_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(labels, predicted, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = per_class_scores(cm)
    assert torch.allclose(scores["recall"], torch.tensor([2 / 3, 1 / 2, 1.0], dtype=torch.float64))
    assert torch.allclose(scores["precision"], torch.tensor([1.0, 1 / 2, 1 / 2], dtype=torch.float64))
    assert torch.allclose(scores["f1"], torch.tensor([0.8, 0.5, 2 / 3], dtype=torch.float64))
    assert scores["support"].tolist() == [3, 2, 1]
    assert most_confused(cm) == [(0, 1, 1), (1, 2, 1)]


def test_a_class_never_predicted_or_absent_scores_zero_not_nan():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    scores = per_class_scores(cm)
    assert not any(torch.isnan(v.double()).any() for v in scores.values())
    assert scores["f1"].tolist() == [1.0, 0.0, 0.0] and most_confused(cm) == []


def test_examples_are_the_most_confident_mistakes_then_some_correct():
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 9.0], [3.0, 0.0], [0.0, 2.0]])
    preds = Predictions(logits, torch.tensor([0, 0, 0, 0, 1]))  # wrong: 1 (weakly), 2 (confidently)
    shown = examples_to_show(preds, mistakes=2, correct=1)
    assert shown[:2].tolist() == [2, 1] and len(shown) == 3 and preds.predicted[shown[2]] == preds.labels[shown[2]]
    assert len(examples_to_show(preds, mistakes=4, correct=1)) == 5  # few mistakes: correct ones fill the grid
    assert preds.accuracy == 0.6 and abs(preds.loss - torch.nn.functional.cross_entropy(logits, preds.labels)) < 1e-6

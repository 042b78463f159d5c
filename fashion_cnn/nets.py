"""Networks: plain ``nn.Module``s that map normalised images [B, 1, 28, 28] to class logits [B, 10]."""

from __future__ import annotations

import torch
from torch import nn


class SeedCNN(nn.Module):
    """The notebook's CNN: two 5x5 convolutions with max-pooling, then a 320-50-10 classifier with dropout.

    The notebook applied ``nn.Dropout2d`` to the flat fc1 output, which acts as plain element-wise dropout;
    ``nn.Dropout`` states that directly. It returns logits (the notebook's ``log_softmax`` before
    ``cross_entropy`` changed nothing, since log_softmax is idempotent).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5),  # 28 -> 24
            nn.MaxPool2d(2),  # -> 12
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),  # -> 8
            nn.MaxPool2d(2),  # -> 4: 20 * 4 * 4 = 320 features
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(320, 50),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(50, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

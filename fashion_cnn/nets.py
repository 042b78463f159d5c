"""Networks: plain ``nn.Module``s that map normalised images [B, 1, 28, 28] to class logits [B, 10]."""

from __future__ import annotations

import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt, restricted_number_type
from torch import nn

from fashion_cnn.data_files import NUM_CLASSES

# The last feature map is 7x7: it can be pooled to 1x1 .. 7x7 (typed, so a config outside that fails when parsed)
PoolSize = restricted_number_type("PoolSize", int, [(">=", 1), ("<=", 7)], join="and")


class SeedCNN(nn.Module):
    """The notebook's CNN: two 5x5 convolutions with max-pooling, then a 320-50-10 classifier with dropout.

    The notebook applied ``nn.Dropout2d`` to the flat fc1 output, which acts as plain element-wise dropout;
    ``nn.Dropout`` states that directly. It returns logits (the notebook's ``log_softmax`` before
    ``cross_entropy`` changed nothing, since log_softmax is idempotent).
    """

    def __init__(self, num_classes: PositiveInt = NUM_CLASSES, dropout: float = 0.5) -> None:
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


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm has one), BatchNorm, ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class StrongCNN(nn.Module):
    """A small VGG-style CNN with BatchNorm: three stages of two 3x3 conv-BN-ReLU blocks (28x28, 14x14, 7x7)
    with max-pooling between them, average pooling to ``pool`` x ``pool``, dropout and a linear classifier.

    Args:
        num_classes: output classes.
        widths: channels of the three stages.
        dropout: dropout before the classifier.
        pool: the 7x7 feature map is average-pooled to ``pool`` x ``pool`` for the classifier: 1 is global
            average pooling; larger keeps where a feature is (a collar, a sleeve), which clothing classes depend on.
    """

    def __init__(self, num_classes: PositiveInt = NUM_CLASSES,
                 widths: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 128),
                 dropout: ClosedUnitInterval = 0.2, pool: PoolSize = 1):
        super().__init__()
        pool = PoolSize(pool)  # the same check for Python callers: ValueError outside 1..7
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            conv_bn_relu(1, c1), conv_bn_relu(c1, c1), nn.MaxPool2d(2),
            conv_bn_relu(c1, c2), conv_bn_relu(c2, c2), nn.MaxPool2d(2),
            conv_bn_relu(c2, c3), conv_bn_relu(c3, c3),
            # pooling a 7x7 map to 7x7 changes nothing but costs a copy and its backward (a few % of a step)
            nn.AdaptiveAvgPool2d(pool) if pool < 7 else nn.Identity(), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3 * pool * pool, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MirrorAverage(nn.Module):
    """Test-time augmentation around ``net``: the mean of its logits for each image and for the image's left-right
    mirror image. For networks trained with horizontal flips (a mirrored coat is still a coat); it doubles the cost
    of a prediction."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.net(x.flip(-1))) / 2

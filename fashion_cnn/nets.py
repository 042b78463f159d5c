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

    def __init__(self, num_classes: PositiveInt = NUM_CLASSES, dropout: ClosedUnitInterval = 0.5) -> None:
        super().__init__()
        dropout = ClosedUnitInterval(dropout)  # the same check for Python callers: ValueError outside [0, 1]
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
        identity_init: start each convolution's first ``in_channels`` filters as the identity (``nn.init.dirac_``;
            the rest keep their random init), as airbench does: at the start each convolution passes its input on
            in those channels (the first one, with one input channel, in one).
        channel_dropout: dropout of whole channels of the final feature map (``nn.Dropout2d``): one random number
            per channel instead of one per feature, so much cheaper on a CPU than ``dropout`` at ``pool`` 7.
        whiten: a first layer after airbench's: instead of the first conv-BN-ReLU block, a frozen 3x3 convolution
            whose 18 filters are the 9 principal components of 3x3 image patches, each scaled to unit variance, and
            their negatives (a learned bias and ReLU follow). Airbench's is 2x2 without padding and stops training
            its bias after a few epochs; this one keeps 28x28 (padding 1) and trains its bias throughout. Its
            weights come from the training images (:meth:`init_from_data`, which the first fit calls); until then
            they are random.
    """

    def __init__(self, num_classes: PositiveInt = NUM_CLASSES,
                 widths: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 128),
                 dropout: ClosedUnitInterval = 0.2, pool: PoolSize = 1, identity_init: bool = False,
                 channel_dropout: ClosedUnitInterval = 0.0, whiten: bool = False) -> None:
        super().__init__()
        pool = PoolSize(pool)  # the same check for Python callers: ValueError outside 1..7
        self.whiten = whiten
        c1, c2, c3 = widths
        if whiten:
            first = nn.Sequential(nn.Conv2d(1, 2 * 9, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            first[0].weight.requires_grad_(False)  # fixed by the data, as airbench's
            # saved with the weights: a checkpoint, or a second fit of the same network, keeps its filters
            self.register_buffer("whitened", torch.tensor(False))
        stem = [first, conv_bn_relu(2 * 9, c1)] if whiten else [conv_bn_relu(1, c1), conv_bn_relu(c1, c1)]
        self.features = nn.Sequential(
            *stem, nn.MaxPool2d(2),
            conv_bn_relu(c1, c2), conv_bn_relu(c2, c2), nn.MaxPool2d(2),
            conv_bn_relu(c2, c3), conv_bn_relu(c3, c3),
            *([nn.Dropout2d(channel_dropout)] if channel_dropout else []),  # absent at 0: the same modules as before
            # pooling a 7x7 map to 7x7 changes nothing but costs a copy and its backward (a few % of a step)
            nn.AdaptiveAvgPool2d(pool) if pool < 7 else nn.Identity(), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3 * pool * pool, num_classes))
        if identity_init:
            with torch.no_grad():
                for block in (m for m in self.features if isinstance(m, nn.Sequential)):  # a conv first
                    weight = block[0].weight  # [out, in, 3, 3]: identity on the first min(out, in) filters
                    if weight.requires_grad:  # not the whitening layer's: the data sets those
                        nn.init.dirac_(weight[: weight.shape[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """With ``whiten``, set the first layer's filters from normalised training images [N, 1, 28, 28], once: the
        eigenvectors of the 3x3 patches' covariance divided by the square roots of their eigenvalues (+ ``eps``),
        and their negatives, so that inside the image the layer's outputs are decorrelated with unit variance (at
        the border its zero padding is mid-grey, not the black background). Without ``whiten``, or when the filters
        are already set (a checkpoint's, or an earlier fit's), nothing."""
        if not self.whiten or self.whitened:
            return
        conv = self.features[0][0]
        patches = nn.functional.unfold(images.float().to(conv.weight.device), kernel_size=3)  # [N, 9, positions]
        patches = patches.transpose(1, 2).reshape(-1, 9)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.reshape(9, 1, 3, 3)
        conv.weight.copy_(torch.cat([filters, -filters]))
        conv.bias.zero_()
        self.whitened.fill_(True)


def views(x: torch.Tensor, mirror: bool, shift: int, fill: float) -> list[torch.Tensor]:
    """Test-time views of normalised images ``x`` [B, 1, H, W]: ``x``; with ``shift`` > 0 also ``x`` shifted by
    ``shift`` pixels down, up, right and left (the vacated border filled with ``fill``, the normalised value of a black
    pixel, as training's random shifts fill it); with ``mirror`` also the left-right mirror image of each of those."""
    out = [x]
    if shift > 0:
        h, w = x.shape[-2], x.shape[-1]
        padded = nn.functional.pad(x, (shift, shift, shift, shift), value=fill)
        for dy, dx in ((0, shift), (2 * shift, shift), (shift, 0), (shift, 2 * shift)):
            out.append(padded[:, :, dy : dy + h, dx : dx + w])
    if mirror:
        out = out + [v.flip(-1) for v in out]
    return out


class ViewAverage(nn.Module):
    """Test-time augmentation around ``net``: the mean of its logits over :func:`views` of each image. For networks
    trained with the same flips and shifts (a mirrored coat is still a coat); it multiplies the cost of a prediction
    by the number of views (2 with ``mirror``, 5 with ``shift``, 10 with both)."""

    def __init__(self, net: nn.Module, mirror: bool = True, shift: int = 0, fill: float = 0.0) -> None:
        super().__init__()
        self.net, self.mirror, self.shift, self.fill = net, mirror, shift, fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a plain loop, not a sum over a generator as FashionClassifier's evaluation has it: export scripts this
        each = views(x, self.mirror, self.shift, self.fill)
        total = self.net(each[0])
        for view in each[1:]:
            total = total + self.net(view)
        return total / len(each)

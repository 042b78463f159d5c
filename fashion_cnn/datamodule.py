"""The FashionMNIST ``LightningDataModule``: uint8 tensors in memory, one gather per batch, normalised per batch."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fashion_cnn.data_files import MEAN, STD, DataError, load_split, locate
from fashion_cnn.errors import OptionsError


class TensorImages(Dataset):
    """Images (uint8 [N, 28, 28]) and labels held as tensors.

    ``DataLoader`` calls ``__getitems__`` with a whole batch of indices, so a batch is one tensor gather rather
    than a Python loop over images; it stays a map-style dataset, so Lightning's distributed sampler shards it.
    With ``with_indices`` a batch (not a single item) also carries the images' indices, for augmentation that
    depends on the image.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, with_indices: bool = False) -> None:
        self.images, self.labels, self.with_indices = images, labels, with_indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, device=self.images.device)
        return (self.images[index], self.labels[index]) + ((index,) if self.with_indices else ())


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``collate_fn`` for :class:`TensorImages`: ``__getitems__`` already returns a whole batch."""
    return batch


def random_shift_flip(images: torch.Tensor, pad: int = 2, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Batched augmentation on [B, 1, H, W]: a random crop of the zero-padded image (shift by up to ``pad``
    pixels) and a horizontal flip with probability 1/2, drawn per image from torch's global RNG; or, given ``flip``
    (bool [B]), a flip of exactly those images."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device).view(1, h, 1) + dy).expand(b, h, w)
    cols = torch.arange(w, device=images.device).view(1, 1, w) + dx
    flip = torch.rand(b, 1, 1, device=images.device) < 0.5 if flip is None else flip.view(b, 1, 1)
    cols = torch.where(flip, cols.flip(-1), cols).expand(b, h, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1).expand(b, h, w)
    return padded[batch, 0, rows, cols].unsqueeze(1)


def random_erase(images: torch.Tensor, p: float, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Batched random erasing (Zhong et al., 2020) on normalised [B, 1, H, W], in place: with probability ``p``
    per image, a rectangle of ``scale`` of the image's area and aspect ratio in ``ratio`` is set to 0 (the mean).

    Like torchvision's ``RandomErasing`` with ``value=0``, except that a rectangle too tall or wide for the image is
    clipped to it instead of redrawn, which keeps the whole batch one tensor operation."""
    b, _, h, w = images.shape
    device = images.device
    area = torch.empty(b, device=device).uniform_(*scale) * (h * w)
    aspect = torch.empty(b, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    height = (area * aspect).sqrt().round().clamp(1, h).view(b, 1, 1)
    width = (area / aspect).sqrt().round().clamp(1, w).view(b, 1, 1)
    top = (torch.rand(b, 1, 1, device=device) * (h - height + 1)).floor()
    left = (torch.rand(b, 1, 1, device=device) * (w - width + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    erase = torch.rand(b, 1, 1, device=device) < p
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width) & erase
    return images.masked_fill_(inside.unsqueeze(1), 0.0)


def hold_out(count: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the validation split (``val_size`` of ``count`` training images) and of the images left to train
    on; which images are held out depends on ``split_seed`` alone."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[:val_size], order[val_size:]


def check_data_options(augment: bool, erase: float, flip: str, test: bool, val_size: int) -> None:
    """Refuse data options that parse but do nothing, or cannot work, together (before any data is read)."""
    if erase and not augment:
        raise OptionsError(f"data.erase={erase} does nothing without augmentation: add data.augment=true "
                           f"(or drop data.erase)")
    if flip != "random" and not augment:
        raise OptionsError(f"data.flip={flip} does nothing without augmentation: add data.augment=true "
                           f"(or drop data.flip)")
    if not test and not val_size:
        raise OptionsError("data.test=false needs a validation split to evaluate: set data.val_size (e.g. 5000)")


class FashionMNISTDataModule(L.LightningDataModule):
    """FashionMNIST, found and checked by :mod:`fashion_cnn.data_files`, served as normalised float batches.

    Args:
        data_dir: where to look for (and, if no copy exists anywhere, download) the dataset.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test (does not change the metrics; on a CPU, larger batches
            hold more memory for no speed gain).
        val_size: images held out of the training set for validation (0: evaluate on the test set each epoch).
        seed: seeds the shuffling; epoch ``e`` is shuffled by ``(seed, e)``.
        split_seed: seeds which training images ``val_size`` holds out, apart from ``seed``: every training seed
            (and every trial of a study) holds out the same images.
        test: use the test set (evaluated after every epoch and at the end of fit). ``false`` for model selection
            (``python -m fashion_cnn.study``'s searches): the test set is not even loaded, only the validation
            split is evaluated, so ``val_size`` must be positive.
        mean: normalisation mean (default: FashionMNIST's training-set mean; the notebook used MNIST's 0.1307).
        std: normalisation std (default: FashionMNIST's training-set std; the notebook used MNIST's 0.3081).
        augment: random shift (up to ``max_shift`` pixels) and horizontal flip of training batches.
        max_shift: the largest shift ``augment`` applies, in pixels.
        flip: how ``augment`` flips: ``random`` (each image with probability 1/2, every epoch) or ``alternate``
            (airbench's alternating flips: a random half in the first epoch, then each image flipped in every other
            epoch, so it is seen both ways in any two epochs in a row).
        erase: with ``augment``, the probability of random erasing each training image (a random rectangle set to
            the mean; 0 turns it off).
        num_workers: DataLoader worker processes (batches are one gather, so 0 is usually fastest).
        verify: check image counts and SHA-256 against the official release (off only for cut-down copies).
        download: allow torchvision's download when no copy is found.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 250,
        val_size: NonNegativeInt = 0,
        seed: int = 0,
        split_seed: int = 0,
        mean: float = MEAN,
        std: PositiveFloat = STD,
        augment: bool = False,
        max_shift: NonNegativeInt = 2,
        flip: Literal["random", "alternate"] = "random",
        erase: ClosedUnitInterval = 0.0,
        num_workers: NonNegativeInt = 0,
        verify: bool = True,
        download: bool = True,
        test: bool = True,
    ) -> None:
        super().__init__()
        check_data_options(augment, erase, flip, test, val_size)
        self.save_hyperparameters()
        self.train_set: TensorImages | None = None
        self.val_set: TensorImages | None = None
        self.test_set: TensorImages | None = None
        self.first_flips: torch.Tensor | None = None  # with flip: alternate, bool [training images]
        self.train_images: int | None = None  # in the training set found, before the validation split was held out

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: how many training images the validation split was held out of, so that
        ``evaluate --split val`` can refuse a copy of another size (where the same indices are other images)."""
        return {"train_images": self.train_images} if self.train_images is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """On resuming (after :meth:`setup`): refuse a training set of another size than the run's, whose split,
        shuffling and epochs would be other ones, so the run would go on training on other data."""
        theirs = state.get("train_images")
        if theirs is not None and self.train_images is not None and theirs != self.train_images:
            raise DataError(f"this run trained on a training set of {theirs} images, and the one in "
                            f"{self.hparams.data_dir} has {self.train_images}: resume it with the copy it trained "
                            f"on (data.data_dir)")

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Names of the loaders ``val_dataloader`` returns, in order."""
        if not self.hparams.test:
            return ("val",)
        return ("val", "test") if self.hparams.val_size else ("test",)

    def prepare_data(self) -> None:
        locate(self.hparams.data_dir, allow_download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        directory = locate(hp.data_dir, allow_download=hp.download)
        train_images, train_labels = load_split(directory, "train", hp.verify)
        self.train_images = len(train_labels)
        if hp.val_size >= len(train_labels):
            raise DataError(f"val_size={hp.val_size} leaves no training images (the training set has "
                            f"{len(train_labels)}); choose a smaller data.val_size")
        device = self._data_device()
        val_idx, train_idx = hold_out(len(train_labels), hp.val_size, hp.split_seed)
        if hp.val_size:
            self.val_set = TensorImages(train_images[val_idx].to(device), train_labels[val_idx].to(device))
            train_images, train_labels = train_images[train_idx], train_labels[train_idx]
        alternate = hp.flip == "alternate"
        self.train_set = TensorImages(train_images.to(device), train_labels.to(device), with_indices=alternate)
        if alternate:  # its own generator: the first flips depend on data.seed alone, not on what ran before
            first = torch.rand(len(train_labels), generator=torch.Generator().manual_seed(hp.seed)) < 0.5
            self.first_flips = first.to(device)
        if hp.test:  # model selection never loads the test set
            test_images, test_labels = load_split(directory, "test", hp.verify)
            self.test_set = TensorImages(test_images.to(device), test_labels.to(device))

    def _data_device(self) -> torch.device:
        """On a GPU the whole dataset (55 MB as uint8) lives on the device: no per-batch host-to-device copy."""
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _loader(self, dataset: TensorImages, batch_size: int, train: bool) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if train:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed)
        else:  # a DistributedSampler, so Lightning leaves it be: its own would pad the last shard with repeated
            # images and count them twice (tests/test_ddp.py checks the exact counts)
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        workers = 0 if dataset.images.is_cuda else self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        sets = {"val": self.val_set, "test": self.test_set}
        return [self._loader(sets[split], self.hparams.eval_batch_size, train=False) for split in self.eval_splits]

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise DataError("data.test=false: this run does not use the test set; evaluate its checkpoint with "
                            "`python -m fashion_cnn.evaluate --ckpt_path ...`")
        return self._loader(self.test_set, self.hparams.eval_batch_size, train=False)

    @property
    def black(self) -> float:
        """The normalised value of a black pixel: the background, and what shifted-in borders are filled with."""
        return -self.hparams.mean / self.hparams.std

    def normalize(self, images: torch.Tensor, augment: bool = False, flip: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [B, 28, 28] (or [B, 1, 28, 28]) images to the network's normalised float input [B, 1, 28, 28].

        Augmentation happens before normalising, so shifted-in pixels are black like the images' background;
        ``flip`` (bool [B]) says which images it flips (default: a random half).
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        scale = 1 / (255 * self.hparams.std)  # (x / 255 - mean) / std in two in-place passes
        if not augment:
            return images.float().mul_(scale).sub_(self.hparams.mean / self.hparams.std)
        images = random_shift_flip(images.float().div_(255), pad=self.hparams.max_shift, flip=flip)
        images = images.sub_(self.hparams.mean).div_(self.hparams.std)
        return random_erase(images, self.hparams.erase) if self.hparams.erase else images

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...],
                                dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, *index = batch  # an index with flip: alternate (training batches only)
        training = self.trainer is not None and self.trainer.training
        flip = None
        if index and training:  # the first epoch's flips, then their opposite in every odd epoch
            flip = self.first_flips.to(index[0].device)[index[0]] ^ bool(self.trainer.current_epoch % 2)
        images = self.normalize(images, augment=self.hparams.augment and training, flip=flip)
        if self.trainer is not None:  # a "true" precision (64-true, 16-true) gets inputs in its dtype; mixed: as is
            images = self.trainer.precision_plugin.convert_input(images)
        return images, labels

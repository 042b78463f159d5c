"""Batches: one gather of uint8 images, normalised per batch, in an order fixed by (seed, epoch)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision
from torchvision.transforms import functional as TF

from fashion_cnn.data_files import DataError
from fashion_cnn.datamodule import FashionMNISTDataModule, TensorImages, random_erase, random_shift_flip
from fashion_cnn.errors import OptionsError
from tests.helpers import FIXTURE


def first_batch(loader):
    return next(iter(loader))


def test_train_batches_are_gathered_uint8_and_normalised_like_torchvision(small_dm):
    loader = small_dm.train_dataloader()
    loader.sampler.set_epoch(0)
    images, labels = first_batch(loader)
    assert images.dtype == torch.uint8 and images.shape == (64, 28, 28) and labels.dtype == torch.int64
    order = list(loader.sampler)[:64]
    assert torch.equal(images, small_dm.train_set.images[order])
    x, _ = small_dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    # identical to the notebook's per-image ToTensor + Normalize, with this DataModule's mean/std
    pil = TF.to_pil_image(images[0])
    expected = TF.normalize(TF.to_tensor(pil), [small_dm.hparams.mean], [small_dm.hparams.std])
    torch.testing.assert_close(x[0], expected)


def test_getitems_is_one_gather_and_getitem_still_works():
    ds = TensorImages(torch.arange(10 * 784, dtype=torch.int32).view(10, 28, 28).to(torch.uint8), torch.arange(10))
    images, labels = ds.__getitems__([3, 1, 4])
    assert labels.tolist() == [3, 1, 4] and torch.equal(images[1], ds[1][0])


def test_order_depends_only_on_seed_and_epoch(small_dm):
    def order(dm, epoch):
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    other = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, seed=1)
    other.setup()
    assert order(small_dm, 3) == order(small_dm, 3)
    assert order(small_dm, 3) != order(small_dm, 4)
    assert order(small_dm, 3) != order(other, 3)
    assert sorted(order(small_dm, 3)) == list(range(512))


def test_validation_split_is_seeded_and_disjoint():
    def split(split_seed, seed=0):
        dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, val_size=100,
                                    split_seed=split_seed, seed=seed)
        dm.setup()
        return dm

    a, b, c = split(0, seed=5), split(0), split(1)  # the training seed does not move the split; split_seed does
    assert len(a.train_set) == 412 and len(a.val_set) == 100 and a.eval_splits == ("val", "test")
    assert torch.equal(a.val_set.images, b.val_set.images) and not torch.equal(a.val_set.images, c.val_set.images)
    train_rows = {bytes(img.numpy()) for img in a.train_set.images}
    assert not any(bytes(img.numpy()) in train_rows for img in a.val_set.images)
    assert len(a.val_dataloader()) == 2


def test_val_size_too_large():
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, val_size=512)
    with pytest.raises(DataError, match="val_size=512 leaves no training images"):
        dm.setup()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_cover_the_set_exactly_once(world, small_dm):
    class FakeTrainer:
        world_size, global_rank = world, 0

    shards = []
    for rank in range(world):  # 256 test images: with 3 processes, shards of 86, 85 and 85, none padded
        FakeTrainer.global_rank = rank
        small_dm.trainer = FakeTrainer()
        shards.append(list(small_dm.test_dataloader().sampler))
    small_dm.trainer = None
    assert sorted(i for s in shards for i in s) == list(range(256))


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_augmentation_is_a_shift_or_flip_of_each_image(pad):
    torch.manual_seed(0)
    images = torch.rand(32, 1, 28, 28)
    out = random_shift_flip(images, pad=pad)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    shifts = range(2 * pad + 1)
    crops = [padded[..., dy : dy + 28, dx : dx + 28] for dy in shifts for dx in shifts]
    candidates = crops + [c.flip(-1) for c in crops]  # shifted by at most pad pixels, mirrored or not
    for i in range(32):
        assert any(torch.equal(out[i], c[i]) for c in candidates)
    assert not torch.equal(out, images)


def test_random_erasing_zeroes_one_rectangle_of_the_erased_images_and_nothing_else():
    torch.manual_seed(0)
    images = torch.rand(256, 1, 28, 28) + 1  # no zeros of its own
    out = random_erase(images.clone(), p=0.5)
    erased = out == 0
    counts = erased.sum(dim=(1, 2, 3))
    assert 0.35 < (counts > 0).float().mean() < 0.65  # about half the images
    assert torch.equal(out[~erased], images[~erased])  # every other pixel unchanged
    for mask, n in zip(erased[:, 0], counts, strict=True):
        if n:
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert n == height * width  # one filled rectangle
            assert 0.02 * 784 - 10 <= n <= 0.33 * 784 + 30  # its area (rounded sides) in the default scale range
    assert torch.equal(random_erase(images.clone(), p=0.0), images)


def test_erase_without_augmentation_is_refused_in_one_line():
    with pytest.raises(OptionsError, match=r"^data.erase=0.5 does nothing without augmentation: add data.augment=true"):
        FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, erase=0.5)


def test_erase_applies_to_training_batches_only(small_dm):
    images = small_dm.test_set.images[:64]
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True, max_shift=0,
                                erase=1.0)
    torch.manual_seed(0)
    erased = dm.normalize(images, augment=True)
    torch.manual_seed(0)
    dm.hparams.erase = 0.0
    flipped = dm.normalize(images, augment=True)  # the same flips: erasing draws after them
    changed = ~torch.isclose(erased, flipped, atol=1e-6)
    assert changed.flatten(1).any(1).float().mean() > 0.9 and (erased[changed] == 0).all()
    dm.hparams.erase = 1.0  # every image would be erased, if evaluation batches were
    labels = small_dm.test_set.labels[:64]
    for training in (False, True):  # the hook the trainer calls on every batch: augments in training only
        dm.trainer = type("Trainer", (), {"training": training, "current_epoch": 0, "precision_plugin": Precision()})()
        hooked, _ = dm.on_after_batch_transfer((images, labels), 0)
        assert torch.equal(hooked, small_dm.normalize(images)) != training


def test_max_shift_sets_how_far_training_images_move(small_dm):
    images = small_dm.test_set.images[:64]
    plain = small_dm.normalize(images)
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True, max_shift=0)
    torch.manual_seed(0)
    out = dm.normalize(images, augment=True)  # max_shift=0: mirror images only
    mirrored = torch.tensor([torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, plain, strict=True)])
    same = torch.tensor([torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain, strict=True)])
    assert (mirrored | same).all() and mirrored.any() and same.any()


def test_augmentation_only_while_training(small_dm):
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True)
    batch = small_dm.test_set.images[:16], small_dm.test_set.labels[:16]
    x, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer: evaluation/prediction path
    torch.testing.assert_close(x, small_dm.normalize(batch[0]))


def test_without_the_test_set_only_validation_is_evaluated():
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, val_size=100, test=False)
    dm.setup()
    assert dm.test_set is None and dm.eval_splits == ("val",) and len(dm.val_dataloader()) == 1
    with pytest.raises(DataError, match="does not use the test set"):
        dm.test_dataloader()
    with pytest.raises(OptionsError, match="needs a validation split"):
        FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, test=False)


def test_alternating_flips_flip_each_image_in_every_other_epoch():
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True, max_shift=0,
                                flip="alternate")
    dm.setup()
    dm.trainer = type("Trainer", (), {"training": True, "current_epoch": 0,  # what the hook reads
                                      "precision_plugin": Precision()})()
    index = torch.arange(64)
    images, labels, got = dm.train_set.__getitems__(index.tolist())
    assert torch.equal(got, index)
    plain = dm.normalize(images)

    def flipped(epoch: int) -> torch.Tensor:
        dm.trainer.current_epoch = epoch
        x, y = dm.on_after_batch_transfer((images, labels, index), 0)
        assert torch.equal(y, labels)
        mirror = torch.tensor([torch.allclose(o, p.flip(-1)) for o, p in zip(x, plain, strict=True)])
        assert (mirror | torch.tensor([torch.allclose(o, p) for o, p in zip(x, plain, strict=True)])).all()
        return mirror

    first = flipped(0)
    assert 10 < first.sum() < 54  # a random half
    assert torch.equal(flipped(1), ~first) and torch.equal(flipped(2), first) and torch.equal(flipped(5), ~first)
    again = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True,
                                   flip="alternate")
    again.setup()
    assert torch.equal(again.first_flips, dm.first_flips)  # drawn from data.seed alone


def test_alternating_flips_without_augmentation_are_refused_in_one_line():
    with pytest.raises(OptionsError, match=r"^data.flip=alternate does nothing without augmentation: add data.augment"):
        FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, flip="alternate")


def test_alternating_flips_train_through_lightning(small_dm):
    """The indices travel through the DataLoader and Lightning's batch transfer to the hook, which drops them."""
    import lightning as L

    from fashion_cnn.module import FashionClassifier

    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True, flip="alternate")
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(FashionClassifier(), datamodule=dm)
    assert trainer.current_epoch == 2 and dm.first_flips is not None and len(dm.first_flips) == 512

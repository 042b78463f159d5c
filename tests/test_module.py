"""The training module: loss, optimiser, metrics and the divergence guard."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fashion_cnn.module import FashionClassifier, TrainingDiverged
from fashion_cnn.nets import SeedCNN


def test_defaults_are_the_notebooks_recipe():
    model = FashionClassifier()
    assert isinstance(model.net, SeedCNN)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["momentum"] == 0.5 and not group["nesterov"]


def test_training_learns_from_real_images(small_dm):
    torch.manual_seed(0)
    model = FashionClassifier(lr=0.05, momentum=0.9)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=small_dm)
    first = trainer.logged_metrics  # after the last epoch
    assert first["test/acc"] > 0.55  # 10 classes: chance is 0.10
    assert set(first) >= {"train/loss", "train/acc", "test/loss", "test/acc"}


def test_divergence_stops_at_once_with_a_clear_message(small_dm):
    torch.manual_seed(0)
    model = FashionClassifier(lr=1e6, momentum=0.5)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) at epoch 0, step \d+.*model.lr"):
        trainer.fit(model, datamodule=small_dm)
    assert trainer.current_epoch == 0


def test_a_checkpoint_is_never_saved_after_an_unchecked_diverged_step(small_dm, tmp_path):
    # Off the CPU only logging steps check the loss on the host; the others set a device flag, read before a save.
    model = FashionClassifier()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=small_dm)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    model.losses_finite = torch.tensor(True) & torch.isfinite(torch.tensor(float("nan")))  # as a GPU step leaves it
    with pytest.raises(TrainingDiverged, match=r"became NaN or infinite in epoch \d+, between the steps it is logged"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists() and (tmp_path / "good.ckpt").is_file()


def test_onecycle_schedule_steps_per_batch(small_dm, tmp_path):
    model = FashionClassifier(lr=0.1, schedule="onecycle")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=small_dm)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.last_epoch == 8  # 512 / 64 steps
    # Lightning's own loader, with no Trainer to resume into: the length check (a resume's) stays out of the way
    trainer.save_checkpoint(tmp_path / "onecycle.ckpt")
    loaded = FashionClassifier.load_from_checkpoint(tmp_path / "onecycle.ckpt", weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize(("momentum", "low", "high"), [(0.9, 0.85, 0.95), (0.5, 0.25, 0.75), (0.98, 0.97, 0.99),
                                                         (0.0, 0.0, 0.0)])
def test_onecycle_cycles_momentum_around_the_configured_momentum(momentum, low, high):
    model = FashionClassifier(lr=0.1, momentum=momentum, schedule="onecycle")
    model.trainer = type("Trainer", (), {"estimated_stepping_batches": 100})()
    built = model.configure_optimizers()
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(high) and min(seen) == pytest.approx(low)
    assert seen[-1] == pytest.approx(high, abs=1e-3)


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_a_momentum_outside_0_to_1_is_refused(momentum):
    with pytest.raises(ValueError, match="does not conform to restriction v>=0 and v<1"):
        FashionClassifier(momentum=momentum)


def test_compile_keeps_one_copy_of_the_weights_under_their_plain_names():
    plain, compiled = FashionClassifier(), FashionClassifier(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(key.startswith("net.") for key in compiled.state_dict())


def test_eval_mirror_tests_on_the_mean_of_each_images_and_its_mirror_images_logits(small_dm):
    torch.manual_seed(0)
    plain, mirror = FashionClassifier(), FashionClassifier(eval_mirror=True)
    mirror.load_state_dict(plain.state_dict())
    images = small_dm.normalize(small_dm.test_set.images[:100])
    labels = small_dm.test_set.labels[:100]
    plain.eval()
    with torch.no_grad():
        expected = (plain(images) + plain(images.flip(-1))) / 2
        mirror.eval()
        loss, acc = mirror._evaluate("test", (images, labels))
    assert acc.compute() == (expected.argmax(1) == labels).float().mean()
    torch.testing.assert_close(loss.compute(), torch.nn.functional.cross_entropy(expected, labels))
    assert "eval_mirror" in mirror.hparams and list(mirror.state_dict()) == list(plain.state_dict())


def test_bn_bias_lr_scale_gives_batchnorm_biases_their_own_rate_and_decay(small_dm, tmp_path):
    from fashion_cnn.errors import FashionCNNError
    from fashion_cnn.nets import StrongCNN

    def model(scale: float) -> FashionClassifier:
        return FashionClassifier(net=StrongCNN(widths=(4, 8, 8)), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                 bn_bias_lr_scale=scale, schedule="onecycle")

    # the optimizer and schedule the shipped recipes (momentum 0.9) had before the option and before momentum set
    # the one-cycle's momentum: one group, a scalar max_lr, OneCycleLR's default momentum cycle
    plain = model(1.0)
    plain.trainer = type("Trainer", (), {"estimated_stepping_batches": 100})()
    built = plain.configure_optimizers()
    before = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(before, max_lr=0.1, total_steps=100)
    assert built["optimizer"].state_dict() == before.state_dict()
    assert built["lr_scheduler"]["scheduler"].state_dict() == schedule.state_dict()
    scaled = model(64.0)
    monitor = L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(max_epochs=1, logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[monitor])
    trainer.fit(scaled, datamodule=small_dm)
    others, biases = trainer.optimizers[0].param_groups
    assert set(monitor.lrs) == {"lr-SGD/weights", "lr-SGD/batchnorm_biases"}  # TensorBoard's tags, not pg1/pg2
    bn = [m for m in scaled.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn} and len(bn) == 6
    assert len(others["params"]) + len(biases["params"]) == len(list(scaled.parameters()))
    assert biases["weight_decay"] == pytest.approx(5e-4 / 64) and others["weight_decay"] == 5e-4
    assert biases["max_lr"] == pytest.approx(6.4) and others["max_lr"] == pytest.approx(0.1)  # one-cycle peaks
    assert biases["lr"] == pytest.approx(64 * others["lr"])
    with pytest.raises(FashionCNNError, match=r"^model.bn_bias_lr_scale=64.0 does nothing: the network has no Batch"):
        FashionClassifier(bn_bias_lr_scale=64.0)

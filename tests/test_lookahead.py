"""Lookahead: slow weights that trail the trained ones, written back into them, saved in checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fashion_cnn.lookahead import Lookahead
from fashion_cnn.module import FashionClassifier
from fashion_cnn.nets import StrongCNN


def train(small_dm, callbacks: list, max_epochs: int = 2) -> FashionClassifier:
    torch.manual_seed(0)
    model = FashionClassifier(net=StrongCNN(widths=(4, 8, 8)), lr=0.1, momentum=0.9, schedule="onecycle")
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=callbacks)
    trainer.fit(model, datamodule=small_dm)
    return model


def test_the_network_ends_as_the_slow_copy_and_training_took_another_path(small_dm):
    lookahead = Lookahead(every=3, decay=0.9)  # 16 steps: the last is no regular update, only the final copy
    model = train(small_dm, [lookahead])
    plain = train(small_dm, [])
    state = {k: v for k, v in model.state_dict().items() if k in lookahead.slow}
    assert set(state) == {k for k, v in model.state_dict().items() if k.startswith("net.") and v.is_floating_point()}
    assert all(torch.equal(state[k], lookahead.slow[k]) for k in state)  # the BatchNorm statistics too
    assert any(not torch.equal(state[k], plain.state_dict()[k]) for k in state)


def test_updates_move_the_slow_copy_part_way_and_the_network_back_to_it():
    model = FashionClassifier(net=StrongCNN(widths=(4, 8, 8)))
    lookahead = Lookahead(every=1, decay=0.5)
    lookahead.on_train_start(None, model)
    weight = model.net.classifier[1].weight
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    lookahead._update(model, 0.25)  # slow += 0.75 * (trained - slow)
    torch.testing.assert_close(weight.detach(), start + 0.75)
    torch.testing.assert_close(lookahead.slow["net.classifier.1.weight"], start + 0.75)


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def test_a_run_resumed_from_a_checkpoint_ends_as_the_uninterrupted_run(small_dm, tmp_path):
    def run(*callbacks: L.Callback, ckpt_path: str | None = None) -> FashionClassifier:
        torch.manual_seed(0)  # the default network: a network object in the hparams would not load weights-only
        model = FashionClassifier(lr=0.05, momentum=0.9, schedule="onecycle")
        trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                            callbacks=[Lookahead(every=3, decay=0.9), *callbacks])
        trainer.fit(model, datamodule=small_dm, ckpt_path=ckpt_path)
        return model

    straight = run()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    run(checkpoints, StopAfterFirstEpoch())  # stopped after epoch 1 of 3, with its slow copy in last.ckpt
    assert any("Lookahead" in key for key in torch.load(checkpoints.last_model_path, weights_only=False)["callbacks"])
    resumed = run(ckpt_path=checkpoints.last_model_path)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_step_between_updates_is_refused_unless_positive():
    with pytest.raises(ValueError):
        Lookahead(every=0)

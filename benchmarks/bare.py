"""The ``bare`` variant: the project's module and data in a bare Lightning Trainer.

No logger, checkpoints, progress bar, model summary or project callbacks: only the Trainer's own loop around
:class:`~fashion_cnn.module.FashionClassifier` (the seed recipe, channels-last) and
:class:`~fashion_cnn.datamodule.FashionMNISTDataModule`. Between ``floor_cl`` (the same steps with no framework) and
``project`` (``python -m fashion_cnn.fit --config seed``) it splits the overhead into Lightning's and the project's.
"""

from __future__ import annotations


def bare(epochs: int, target: float | None, data_dir: str, verify: bool = True) -> None:
    """Train the seed recipe for ``epochs`` in a bare Trainer, reporting each epoch to the benchmark; stop once the
    test accuracy reaches ``target``. ``verify=False`` skips the check against the official release's counts and
    checksums, so that a cut-down copy (the tests') can be used."""
    import lightning as L
    from lightning.pytorch.callbacks import LambdaCallback

    from benchmarks.callback import BenchWorker
    from fashion_cnn.datamodule import FashionMNISTDataModule
    from fashion_cnn.module import FashionClassifier

    def stop_at_target(trainer: L.Trainer, module: L.LightningModule) -> None:
        if target is not None and float(trainer.callback_metrics["test/acc"]) >= target:
            trainer.should_stop = True

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[BenchWorker(), LambdaCallback(on_validation_epoch_end=stop_at_target)])
    data = FashionMNISTDataModule(data_dir, download=False, verify=verify)
    trainer.fit(FashionClassifier(channels_last=True), datamodule=data)

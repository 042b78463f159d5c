"""What training shows in TensorBoard besides the curves: pictures, per-class accuracy, learning rate, hparams."""

from __future__ import annotations

import io

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from fashion_cnn.analysis import confusion_matrix, per_class_scores, predictions
from fashion_cnn.checkpoints import load
from fashion_cnn.config import CONFIG_DIR
from fashion_cnn.data_files import CLASSES, load_split
from tests.helpers import FIXTURE, TRAINED_EPOCHS, scalars


def events(run):
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_pictures_every_n_epochs_and_at_the_last(trained_run):
    logged = events(trained_run)
    steps_per_epoch = 512 // 64  # the fixture's training images / batch size
    for tag in ("test/confusion_matrix", "test/predictions"):
        images = logged.Images(tag)
        # every 2 epochs, and at the last (3rd) one: logged at the global step of the epoch's end
        assert [i.step for i in images] == [2 * steps_per_epoch, TRAINED_EPOCHS * steps_per_epoch]
        picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert picture.width >= 600 and picture.height >= 300  # large enough to read


def test_per_class_accuracy_matches_the_final_model(trained_run):
    logged = scalars(trained_run)
    loaded = load(trained_run / "checkpoints" / "last.ckpt")
    images, labels = load_split(FIXTURE, "test", verify=False)
    preds = predictions(loaded.net, images, labels, loaded.datamodule.normalize)
    recall = per_class_scores(confusion_matrix(preds.labels, preds.predicted, len(CLASSES)))["recall"]
    for i, name in enumerate(CLASSES):
        values = logged[f"test_class_acc/{name}"]
        assert len(values) == 2 and abs(values[-1] - float(recall[i])) < 1e-6


def test_learning_rate_and_hparams_tab(trained_run):
    logged = scalars(trained_run)
    assert logged["lr-SGD"] == pytest.approx([0.05] * TRAINED_EPOCHS)
    assert len(logged["final/test_acc"]) == 1  # the hparams summary does not log the metric a second time
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(trained_run.parent))
    multiplexer.Reload()
    content = multiplexer.PluginRunToTagToContent("hparams")["version_0"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert {m.name.tag for m in experiment.metric_infos} == {"final/test_acc", "final/test_loss"}
    hparams = session.session_start_info.hparams
    assert hparams["model.lr"].number_value == 0.05 and hparams["data.batch_size"].number_value == 64
    assert hparams["model.net.class_path"].string_value == "fashion_cnn.nets.SeedCNN"


def test_the_seed_config_turns_them_on():
    callbacks = yaml.safe_load((CONFIG_DIR / "seed.yaml").read_text())["trainer"]["callbacks"]
    paths = [c["class_path"] for c in callbacks]
    assert "fashion_cnn.callbacks.EpochSummary" in paths and "fashion_cnn.callbacks.HParamsSummary" in paths
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in paths
    pictures = next(c for c in callbacks if c["class_path"] == "fashion_cnn.callbacks.PredictionPictures")
    assert pictures["init_args"]["every_n_epochs"] == 10

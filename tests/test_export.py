"""``python -m fashion_cnn.export``: TorchScript and ONNX files that give the checkpoint's logits for any batch."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from fashion_cnn import export
from fashion_cnn.checkpoints import load
from fashion_cnn.commands import CommandError
from fashion_cnn.data_files import CLASSES, MEAN, STD, load_split
from tests.helpers import FIXTURE, TRAINED_EPOCHS, best_checkpoint, tree_digest

BATCHES = (1, 7)


@pytest.fixture(scope="module")
def inputs_and_logits(trained_run):
    """Normalised fixture images in batches of 1 and 7, and the checkpoint's PyTorch logits for them."""
    loaded = load(best_checkpoint(trained_run))
    images = loaded.datamodule.normalize(load_split(FIXTURE, "test", verify=False)[0][: sum(BATCHES)])
    batches = list(images.split(BATCHES))
    with torch.inference_mode():
        return [(batch, loaded.net(batch)) for batch in batches]


def run_export(trained_run, out_dir, formats: str) -> int:
    return export.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--out_dir", str(out_dir),
                        "--formats", formats])


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")  # still what LibTorch loads
def test_torchscript_matches_pytorch(trained_run, inputs_and_logits, tmp_path):
    assert run_export(trained_run, tmp_path, "torchscript") == 0
    stem = best_checkpoint(trained_run).stem
    scripted = torch.jit.load(str(tmp_path / f"{stem}.torchscript.pt"))
    for batch, expected in inputs_and_logits:
        got = scripted(batch)
        assert got.shape == (len(batch), len(CLASSES)) and torch.allclose(got, expected, atol=1e-5, rtol=0)
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["classes"] == list(CLASSES) and (meta["mean"], meta["std"]) == (MEAN, STD)
    assert meta["files"] == [f"{stem}.torchscript.pt"] and not (tmp_path / f"{stem}.onnx").exists()
    assert (meta["checkpoint_epoch"], meta["checkpoint_step"]) == (TRAINED_EPOCHS, TRAINED_EPOCHS * 512 // 64)


def test_onnx_matches_pytorch(trained_run, inputs_and_logits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert run_export(trained_run, tmp_path, "onnx") == 0
    session = ort.InferenceSession(str(tmp_path / f"{best_checkpoint(trained_run).stem}.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "logits"
    for batch, expected in inputs_and_logits:
        (got,) = session.run(None, {"images": batch.numpy()})
        assert got.shape == (len(batch), len(CLASSES))
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("formats", ["tflite", "", ",", "onnx,coreml"])
def test_bad_formats_are_a_usage_error(trained_run, tmp_path, capsys, formats):
    with pytest.raises(SystemExit) as exit_info:
        run_export(trained_run, tmp_path / "out", formats)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("python -m fashion_cnn.export: error: argument --formats")
    assert "choose from torchscript,onnx" in err and "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_a_run_with_test_time_views_exports_their_average(mirror_run, tmp_path):
    loaded = load(mirror_run / "checkpoints" / "last.ckpt")
    batch = loaded.datamodule.normalize(load_split(FIXTURE, "test", verify=False)[0][:7])
    black = -loaded.mean / loaded.std
    shifted = [torch.nn.functional.pad(batch, (1, 1, 1, 1), value=black)[..., dy : dy + 28, dx : dx + 28]
               for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2))]
    each = [batch, *shifted]
    each += [v.flip(-1) for v in each]  # the 10 views of model.eval_mirror with model.final_shift 1
    with torch.inference_mode():
        expected = sum(loaded.net.net(v) for v in each) / 10
    assert export.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--formats", "torchscript"]) == 0
    scripted = torch.jit.load(str(tmp_path / "last.torchscript.pt"))
    assert torch.allclose(scripted(batch), expected, atol=1e-5, rtol=0)
    output = json.loads((tmp_path / "last.json").read_text())["output"]
    assert output["mirror_average"] is True and output["shift_average"] == 1
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert export.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--formats", "onnx"]) == 0
    session = ort.InferenceSession(str(tmp_path / "last.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": batch.numpy()})
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5, rtol=0)


class PythonOnly(torch.nn.Module):
    """A network TorchScript cannot compile (it calls a lambda), such as a user's own may be."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, len(CLASSES))
        self.prepare = lambda x: x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.prepare(x))


def test_a_network_that_cannot_be_exported_is_one_line(trained_run, tmp_path):
    loaded = dataclasses.replace(load(best_checkpoint(trained_run)), net=PythonOnly())
    with pytest.raises(CommandError, match=r"^TorchScript cannot compile this network \(.+\); export it with "
                                           r"--formats onnx$"):
        export.export(loaded, tmp_path / "new" / "export", ["torchscript"])
    assert list(tmp_path.iterdir()) == []  # the directories it made are gone again


def test_an_export_that_fails_midway_leaves_the_earlier_one_as_it_was(trained_run, tmp_path, monkeypatch):
    assert run_export(trained_run, tmp_path, "torchscript") == 0
    before = tree_digest(tmp_path)

    def written_then_refused(net, path):
        path.write_bytes(b"half an ONNX file")
        raise CommandError("ONNX cannot export this network (a test)")

    monkeypatch.setattr(export, "export_onnx", written_then_refused)
    # TorchScript is written first (aside), then ONNX fails: neither replaces the earlier export's files
    assert run_export(trained_run, tmp_path, "torchscript,onnx") == 1
    assert tree_digest(tmp_path) == before  # nothing replaced, nothing left beside them (no .export-* directory)


def test_onnx_without_its_packages_is_one_line_before_anything_is_written(trained_run, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an import of it raises ImportError: not installed
    assert run_export(trained_run, tmp_path / "out", "torchscript,onnx") == 1
    err = capsys.readouterr().err
    assert err == ("python -m fashion_cnn.export: error: ONNX export needs the onnxscript package: "
                   "pip install -e '.[export]' (or choose --formats torchscript)\n")
    assert not (tmp_path / "out").exists()

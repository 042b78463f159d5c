"""Stop a real training process mid-epoch (SIGKILL, or SIGTERM as schedulers send), resume it with one command, and
get the uninterrupted run's numbers; resuming with another network is one line that changes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from fashion_cnn import fit as fit_command
from fashion_cnn.claim import CLAIM
from tests.helpers import FIXTURE, SMALL, TRAINED_EPOCHS, fixture_cut, scalars, signal_in_epoch_3, tree_digest

EPOCHS = 5
ARGS = ["--data.data_dir", str(FIXTURE), "--data.verify", "false", "--data.download", "false",
        "--data.batch_size", "16", "--trainer.max_epochs", str(EPOCHS), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "8"]


def fit(cwd: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fashion_cnn.fit", *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def per_epoch(run: Path) -> tuple[list[float], list[float]]:
    logged = scalars(run)
    return logged["test/acc"], logged["test/loss"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    cwd = tmp_path_factory.mktemp("straight")
    assert fit(cwd).wait(timeout=300) == 0
    return cwd / "lightning_logs" / "version_0"


@pytest.mark.parametrize(("sig", "status", "said"), [(signal.SIGKILL, -signal.SIGKILL, None),
                                                    (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                    (signal.SIGINT, 130, "interrupted")])  # Ctrl-C
def test_stopped_mid_epoch_then_resumed_equals_an_uninterrupted_run(sig, status, said, straight_run, tmp_path):
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: give the run Ctrl-C's default back.
    proc = fit(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = signal_in_epoch_3(proc, sig)
    assert proc.returncode == status, "".join(output)
    run = tmp_path / "lightning_logs" / "version_0"
    saved_epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert saved_epoch < EPOCHS - 1  # it really was interrupted before the end
    if said:  # one line: what happened and how to continue
        lines = [line for line in output if line.startswith(f"python -m fashion_cnn.fit: {said}")]
        assert len(lines) == 1 and "--ckpt_path last" in lines[0] and f"end of epoch {saved_epoch + 1}" in lines[0]
        assert "Traceback" not in "".join(output)

    config = (run / "config.yaml").read_bytes()
    resumed = fit(tmp_path, "--ckpt_path", "last")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert not (tmp_path / "lightning_logs" / "version_1").exists()  # the same run continued
    assert (run / "config.yaml").read_bytes() == config  # still the config that reruns it from the start

    want = torch.load(straight_run / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["epoch"] == want["epoch"]
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    acc, loss = per_epoch(straight_run)
    got_acc, got_loss = per_epoch(run)
    assert len(acc) == EPOCHS and got_acc == acc and got_loss == loss


def test_resume_with_no_run_or_a_bad_checkpoint_is_one_line(tmp_path):
    proc = fit(tmp_path, "--ckpt_path", "last")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "error: no run in lightning_logs/" in out and "Traceback" not in out
    assert "pass --trainer.logger.init_args.save_dir" in out  # fit's option, not evaluate's --logs_dir
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = fit(tmp_path, "--ckpt_path", str(bad))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "truncated or not a PyTorch checkpoint" in out and "Traceback" not in out
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--config", "strong"], "fashion_cnn.nets.SeedCNN, but this config builds fashion_cnn.nets.StrongCNN"),
    (["--model.net.init_args.num_classes", "5"], "fashion_cnn.nets.SeedCNN with other options than this config's"),
])
def test_resuming_with_another_network_is_one_line_and_writes_nothing(args, words, trained_run, tmp_path,
                                                                      monkeypatch, capsys):
    logs = tmp_path / "lightning_logs"
    shutil.copytree(trained_run, logs / "version_0")
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert fit_command.main([*SMALL, *args, "--ckpt_path", "last"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and words in err, err
    run = Path("lightning_logs", "version_0")  # as `last` names it, relative to the working directory
    assert f"resume it with --config {run / 'config.yaml'} --ckpt_path {run / 'checkpoints' / 'last.ckpt'}" in err
    assert tree_digest(tmp_path) == before and sorted(p.name for p in logs.iterdir()) == ["version_0"]


def test_resuming_with_other_optimizer_groups_is_one_line_and_writes_nothing(trained_run, tmp_path, monkeypatch,
                                                                            capsys):
    logs = tmp_path / "lightning_logs"
    shutil.copytree(trained_run, logs / "version_0")
    last = logs / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["bn_bias_lr_scale"] = 64.0  # as if trained with a second group of BN biases
    torch.save(checkpoint, last)
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert fit_command.main([*SMALL, "--ckpt_path", "last"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "was trained with model.bn_bias_lr_scale=64, whose optimizer state this config's 1 cannot continue" in err
    assert tree_digest(tmp_path) == before and sorted(p.name for p in logs.iterdir()) == ["version_0"]


def test_resuming_with_another_recipe_is_one_line_and_writes_nothing(trained_run, tmp_path, monkeypatch, capsys):
    from fashion_cnn.resume import check_same_recipe

    logs = tmp_path / "lightning_logs"
    shutil.copytree(trained_run, logs / "version_0")
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    # the run trained with lr 0.05 and momentum 0.9 (conftest); `--ckpt_path last` alone is the seed config's recipe
    assert fit_command.main([*SMALL, "--ckpt_path", "last"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert ("was trained with model.lr=0.05, model.momentum=0.9, this config has model.lr=0.01, model.momentum=0.5"
            in err)
    assert "resume it with --config lightning_logs/version_0/config.yaml --ckpt_path" in err
    assert tree_digest(tmp_path) == before and sorted(p.name for p in logs.iterdir()) == ["version_0"]
    # where the data is and how it is read or evaluated may change; options the checkpoint predates are not compared
    checkpoint = torch.load(logs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    model, data = dict(checkpoint["hyper_parameters"]), dict(checkpoint["datamodule_hyper_parameters"])
    check_same_recipe(checkpoint, Path("x.ckpt"), {**model, "compile": True, "a_new_option": 1},
                      {**data, "data_dir": "/elsewhere", "num_workers": 2, "eval_batch_size": 7})
    with pytest.raises(fit_command.FashionCNNError, match=r"data.batch_size=\d+, this config has data.batch_size=3;"):
        check_same_recipe(checkpoint, Path("x.ckpt"), model, {**data, "batch_size": 3})


def test_resuming_a_one_cycle_run_for_longer_is_one_line_and_keeps_the_run(tmp_path):
    assert fit(tmp_path, "--config", "fast", "--trainer.max_epochs", "2").wait(timeout=300) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    kept = {p: p.read_bytes() for p in [run / "config.yaml", *(run / "checkpoints").iterdir()]}
    logged, files = scalars(run), sorted(p.name for p in run.iterdir() if not CLAIM.fullmatch(p.name))
    # refused once the data is set up and the steps are counted, after Lightning's setup wrote into the run
    proc = fit(tmp_path, "--config", "fast", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "one-cycle schedule was laid out over 4 steps and this config trains 6" in out
    assert all(p.read_bytes() == content for p, content in kept.items())
    assert sorted(p.name for p in run.iterdir() if not CLAIM.fullmatch(p.name)) == files
    assert scalars(run) == logged


def test_a_copied_run_resumes_in_the_copy_and_never_logs_into_another_run(trained_run, tmp_path, monkeypatch,
                                                                           capsys):
    elsewhere = tmp_path / "elsewhere" / "version_0"
    shutil.copytree(trained_run, elsewhere)
    config = elsewhere / "config.yaml"  # names the original's save_dir, and a version as configs once did
    config.write_text(config.read_text().replace("version: null", "version: 0"))
    local = tmp_path / "lightning_logs" / "version_0"  # another run, where that save_dir and version point
    shutil.copytree(trained_run, local)
    before = tree_digest(tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    # the command a refused resume advises: the run's own config.yaml and checkpoint
    ckpt = elsewhere / "checkpoints" / "last.ckpt"
    assert fit_command.main(["--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_epochs",
                             str(TRAINED_EPOCHS + 1)]) == 0
    assert tree_digest(tmp_path / "lightning_logs") == before  # nothing written beside or into the other run
    assert len(scalars(elsewhere)["test/acc"]) == TRAINED_EPOCHS + 1  # the copy went on by one epoch
    assert torch.load(ckpt, weights_only=True)["epoch"] == TRAINED_EPOCHS


def test_with_a_validation_split_last_ckpt_is_the_last_epoch_not_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a learning rate too small to change any prediction: validation accuracy never improves after epoch 1
    assert fit_command.main([*SMALL, "--data.val_size", "128", "--trainer.max_epochs", "3", "--model.lr", "1e-9"]) == 0
    ckpts = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch00-") and names[1] == "last.ckpt", names
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2  # a stop would lose no epoch


def test_a_moved_run_keeps_its_best_checkpoint_when_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*SMALL, "--data.val_size", "128", "--model.lr", "1e-9"]  # validation accuracy stays put: epoch 1 is best
    assert fit_command.main([*args, "--trainer.max_epochs", "2"]) == 0
    shutil.move(tmp_path / "lightning_logs", tmp_path / "moved")
    run = tmp_path / "moved" / "version_0"
    assert fit_command.main([*args, "--trainer.max_epochs", "4", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                             "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name",
                             "moved"]) == 0
    # Lightning forgets a moved run's best score: the first epoch after the resume would have become the "best"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch00-") and names[1] == "last.ckpt", names
    assert not (tmp_path / "lightning_logs").exists()


class _Fails(L.Callback):
    """Raises as training starts (before the first step), or after the first step."""

    def __init__(self, after_a_step: bool) -> None:
        self.after_a_step = after_a_step

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.after_a_step:
            raise RuntimeError("stopped before a step")

    def on_train_batch_end(self, trainer, *args) -> None:
        raise RuntimeError("stopped after a step")


@pytest.mark.parametrize("after_a_step", [False, True])
def test_a_resume_that_fails_before_a_step_leaves_its_run_as_it_was(trained_run, tmp_path, monkeypatch, after_a_step):
    run = tmp_path / "lightning_logs" / "version_0"
    shutil.copytree(trained_run, run)
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="stopped"):
        fit_command.train(["--config", str(run / "config.yaml"), "--ckpt_path", "last",
                           "--trainer.max_epochs", str(TRAINED_EPOCHS + 1)], callbacks=[_Fails(after_a_step)])
    added = sorted(set(tree_digest(tmp_path)) - set(before))
    if after_a_step:  # what it trained is logged: its events file stays
        assert len(added) == 1 and added[0].startswith("lightning_logs/version_0/events.out.tfevents")
    else:
        assert tree_digest(tmp_path) == before


class _CtrlC(L.Callback):
    """Ctrl-C as training starts, before its first step (e.g. while a resumed run restores its state)."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_before_the_first_step_says_where_to_resume_and_leaves_nothing(trained_run, tmp_path, monkeypatch,
                                                                              capsys):
    run = tmp_path / "lightning_logs" / "version_0"
    shutil.copytree(trained_run, run)
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = fit_command.train(["--config", str(run / "config.yaml"), "--ckpt_path", "last",
                                "--trainer.max_epochs", str(TRAINED_EPOCHS + 1)], callbacks=[_CtrlC()])
    err = capsys.readouterr().err
    assert result.status == 130 and tree_digest(tmp_path) == before  # the run's files as they were
    # not "start it again": the checkpoint it resumed from is still the place to go on from
    last = Path("lightning_logs", "version_0", "checkpoints", "last.ckpt")  # as --ckpt_path last resolved it
    assert f"interrupted; {last} (end of epoch {TRAINED_EPOCHS}) is intact" in err
    result = fit_command.train([*SMALL], callbacks=[_CtrlC()])  # a new run: its directory goes again
    assert result.status == 130 and "it had saved no checkpoint yet: start it again" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


class _SigtermInSetup(L.Callback):
    """SIGTERM while the run sets up (loading the data), before Lightning has put its own handler in place."""

    def setup(self, trainer, pl_module, stage) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_before_lightning_handles_it_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    result = fit_command.train([*SMALL], callbacks=[_SigtermInSetup()])  # the process would die silently (-15)
    assert result.status == 143 and not (tmp_path / "lightning_logs").exists()
    assert capsys.readouterr().err.endswith("python -m fashion_cnn.fit: stopped by SIGTERM; it had saved no checkpoint "
                                            "yet: start it again\n")
    assert signal.getsignal(signal.SIGTERM) is handler  # the process's own handler given back


def test_resuming_on_a_copy_of_another_size_is_one_line_and_changes_nothing(trained_run, tmp_path, monkeypatch,
                                                                           capsys):
    run = tmp_path / "lightning_logs" / "version_0"
    shutil.copytree(trained_run, run)
    cut = fixture_cut(tmp_path / "cut", 400)
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = fit_command.main(["--config", str(run / "config.yaml"), "--ckpt_path", "last", "--data.data_dir", str(cut),
                             "--trainer.max_epochs", str(TRAINED_EPOCHS + 1)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [
        f"python -m fashion_cnn.fit: error: this run trained on a training set of 512 images, and the one in {cut} "
        f"has 400: resume it with the copy it trained on (data.data_dir)"]
    assert tree_digest(tmp_path) == before

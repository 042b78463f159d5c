"""The real entry point, ``python -m fashion_cnn.fit``, on the small fixture: logs, checkpoints, reproducibility,
and one-line errors for bad input that leave existing runs alone."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

from fashion_cnn import config, fit, runs
from fashion_cnn.config import CONFIG_DIR
from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.module import FashionClassifier
from tests.helpers import SMALL, scalars, tree_digest


def run_fit(*args: str) -> int:
    return fit.main([*SMALL, *args])


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_smoke_run_logs_every_epoch_checkpoints_and_hyperparameters(workdir, capsys):
    assert run_fit("--trainer.max_epochs", "3") == 0
    run = workdir / "lightning_logs" / "version_0"
    events = runs.run_scalars(run)
    logged = {tag: [e.value for e in tag_events] for tag, tag_events in events.items()}
    assert len(logged["test/acc"]) == 3 and len(logged["test/loss"]) == 3
    assert all(0.0 <= a <= 1.0 for a in logged["test/acc"]) and "train/loss" in logged and "train/acc" in logged
    # 3 epochs of 8 steps with log_every_n_steps 4: the step loss is written on steps 4, 8, ..., 24 (0-based 3, ...)
    assert [e.step for e in events["train/loss"]] == [3, 7, 11, 15, 19, 23]
    # No validation split, so nothing is picked: the final test is the last epoch's, the only checkpoint last.ckpt.
    assert logged["final/test_acc"] == [logged["test/acc"][-1]]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    hparams = (run / "hparams.yaml").read_text()
    assert "lr: 0.01" in hparams and "momentum: 0.5" in hparams and "batch_size: 64" in hparams
    assert "SeedCNN" in hparams and "class_path: fashion_cnn.nets.SeedCNN" in (run / "config.yaml").read_text()
    out = capsys.readouterr().out
    assert "[1] Test loss" in out and "[3] Test loss" in out


def test_a_finished_run_lets_go_of_its_trainer_model_and_data(workdir):
    # A run's memory must go back when it returns, not at interpreter exit (where this torch build's RSS peaks):
    # jsonargparse keeps its last parser in a ContextVar, which would keep the whole CLI alive.
    def alive() -> list:
        return [o for o in gc.get_objects() if isinstance(o, Trainer | FashionClassifier | FashionMNISTDataModule)]

    before = {id(o) for o in alive()}  # whatever other tests still hold
    assert run_fit("--trainer.max_epochs", "1") == 0
    assert [o for o in alive() if id(o) not in before] == []


def test_same_command_same_numbers(workdir):
    for _ in range(2):
        assert run_fit("--trainer.max_epochs", "2") == 0
    runs = [workdir / "lightning_logs" / f"version_{i}" for i in (0, 1)]
    assert scalars(runs[0])["test/acc"] == scalars(runs[1])["test/acc"]
    weights = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_validation_split_checkpoints_by_val_acc(workdir):
    assert run_fit("--trainer.max_epochs", "1", "--data.val_size", "100") == 0
    run = workdir / "lightning_logs" / "version_0"
    assert {"val/acc", "val/loss", "test/acc", "test/loss"} <= set(scalars(run))
    assert any(p.name.startswith("best-epoch00-val_acc") for p in (run / "checkpoints").iterdir())


def test_command_line_overrides_reach_the_run(workdir):
    assert run_fit("--trainer.max_epochs", "1", "--model.lr", "0.05", "--data.batch_size", "128") == 0
    hparams = (workdir / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert "lr: 0.05" in hparams and "batch_size: 128" in hparams


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.lr", "0"], "model.lr"),
        (["--model.lr", "-0.1"], "model.lr"),
        (["--data.batch_size", "0"], "data.batch_size"),
        (["--model.lrr", "0.1"], "model.lrr"),
        (["--trainer.max_epochs", "0"], "max_epochs must be positive"),
        (["--trainer.max_epochs", "-3"], "max_epochs must be positive"),
        (["--seed_everything", "-1"], "seed_everything must be between 0 and 4294967295"),
        (["--seed_everything", str(2**32)], "seed_everything must be between 0 and 4294967295"),
        (["--model.lr", "abc"], "model.lr"),
        (["--data.val_size", "-1"], "data.val_size"),
        (["--model.schedule", "cosine"], "model.schedule"),
        (["--model.momentum", "1"], '"model.momentum": Not of type Momentum'),
        (["--config", "strong", "--model.momentum", "0"], "model.nesterov needs momentum: set model.momentum"),
        (["--config", "strong", "--model.net.init_args.pool", "9"], '"pool": Not of type PoolSize'),
        (["--config", "strong", "--model.net.init_args.dropout", "1.5"], '"dropout": Not of type ClosedUnitInterval'),
        (["--model.net.init_args.dropout", "1.5"], '"dropout": Not of type ClosedUnitInterval'),  # SeedCNN's
        (["--data.max_shift", "-1"], "data.max_shift"),
        (["--config", "fsat"], "--config fsat: no such file, and not a shipped config (one of fast, gpu, quick, seed"),
        (["--model.final_shift", "1"], "model.final_shift=1 is for networks trained with random shifts"),
        (["--config", "strong", "--model.final_shift", "2"], "set model.final_shift to at most 1"),
        (["--trainer.strategy", "dpp"], "invalid strategy name"),
        (["--trainer.accelerator", "cpuu"], "invalid accelerator name"),
        # Lightning's own optimizer options would replace the module's optimizer and ignore model.lr and the rest
        (["--optimizer", "Adam"], "--optimizer is not used by this project"),
        (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "5"], "--lr_scheduler is not used by this project"),
    ],
)
def test_bad_configuration_is_one_line_and_touches_no_run(workdir, capsys, args, message):
    previous = workdir / "lightning_logs" / "version_0"
    previous.mkdir(parents=True)
    (previous / "notes.txt").write_text("an earlier run")
    before = tree_digest(workdir / "lightning_logs")
    try:
        code = run_fit(*args)
    except SystemExit as exit_info:  # argument errors exit from the parser, before anything is built
        code = exit_info.code
    err = capsys.readouterr().err
    # a value that cannot work: one line, status 1; a usage error: that line and a pointer to --help, status 2
    assert code in (1, 2) and err.count("\n") == code, err
    assert err.startswith("python -m fashion_cnn.fit: error: ") and message in err.splitlines()[0]
    assert tree_digest(workdir / "lightning_logs") == before


def test_unknown_key_in_a_config_file(workdir, capsys):
    config = workdir / "bad.yaml"
    config.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(SystemExit) as usage:
        run_fit("--config", str(config))
    err = capsys.readouterr().err
    assert usage.value.code == 2 and err.count("\n") == 2 and "learning_rate" in err.splitlines()[0]
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize(("content", "encoding", "message"), [
    ("model:\n  lr: 0.1\n", "utf-16", "not a UTF-8 text file; give a YAML config saved as UTF-8 (a checkpoint goes "
                                       "to --ckpt_path)"),  # as some Windows editors save YAML
    ("", "utf-8", "the file has no settings (it is empty, or only comments); give a YAML mapping such as `model: "
                  "{lr: 0.1}`"),
    ("# only a comment\n", "utf-8", "the file has no settings"),
    ("model:\n  lr: 0.1\ndata:\n", "utf-8", "`data:` has nothing under it; give its options, or leave it out"),
    ("model: null\n", "utf-8", "`model:` has nothing under it"),
])
def test_a_config_file_jsonargparse_cannot_read_is_one_line(workdir, capsys, content, encoding, message):
    config = workdir / "config.yaml"
    config.write_text(content, encoding=encoding)
    assert run_fit("--config", str(config)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m fashion_cnn.fit: error: --config {config}: {message}") and err.count("\n") == 1
    assert not (workdir / "lightning_logs").exists()


def test_missing_data_is_one_line(workdir, capsys, no_other_copies):
    code = fit.main(["--data.data_dir", str(workdir / "nowhere"), "--data.download", "false"])
    err = capsys.readouterr().err
    assert code == 1 and "FashionMNIST not found" in err and "make data" in err and "Traceback" not in err
    assert not (workdir / "lightning_logs").exists()


def test_help_and_print_config_as_a_user_runs_them(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fashion_cnn.fit", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    helped = cli("--help")
    assert helped.returncode == 0 and "--model.lr" in helped.stdout and "--data.batch_size" in helped.stdout
    printed = cli("--print_config", "--model.lr", "0.05")
    assert printed.returncode == 0 and "lr: 0.05" in printed.stdout and "max_epochs: 40" in printed.stdout
    bad = cli("--data.batch_size", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "data.batch_size" in bad.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_config_names_files_and_inline_configs():
    shipped = str(CONFIG_DIR / "fast.yaml")
    assert config.resolve_config_names(["-c", "fast"]) == ["-c", shipped]
    assert config.resolve_config_names(["--config=fast", "--config", shipped]) == [f"--config={shipped}", "--config",
                                                                                shipped]
    inline = ["--config", "{model: {lr: 0.05}}", "--config", "trainer:\n  max_epochs: 2"]  # LightningCLI reads these
    assert config.resolve_config_names(inline) == inline


def test_a_runs_config_yaml_runs_it_again_in_a_new_directory(workdir, capsys):
    assert run_fit("--trainer.max_epochs", "1") == 0
    first = workdir / "lightning_logs" / "version_0"
    config = first / "config.yaml"
    assert "version: null" in config.read_text()  # the logger's number is not part of the experiment
    before = tree_digest(first)
    assert fit.main(["--config", str(config)]) == 0  # the README's "runs it again": the same numbers, a new run
    again = workdir / "lightning_logs" / "version_1"
    assert scalars(again)["test/acc"] == scalars(first)["test/acc"] and tree_digest(first) == before
    # a config.yaml that names its run (as they did before): one line, and that run untouched
    config.write_text(config.read_text().replace("version: null", "version: 0"))
    before = tree_digest(workdir / "lightning_logs")
    capsys.readouterr()
    assert fit.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lightning_logs/version_0 already holds a run" in err and "set it to null" in err
    assert tree_digest(workdir / "lightning_logs") == before


def test_data_dir_that_is_a_file(workdir, capsys):
    (workdir / "data").write_text("not a directory")
    assert fit.main(["--data.data_dir", "data"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a directory" in err and not (workdir / "lightning_logs").exists()


def test_a_run_refused_at_construction_removes_the_log_directories_it_made(workdir, capsys):
    code = run_fit("--config", "strong", "--model.momentum", "0", "--trainer.logger.init_args.save_dir", "new/logs")
    assert code == 1 and "model.nesterov needs momentum" in capsys.readouterr().err
    assert not (workdir / "new").exists()


def test_a_run_without_a_logger_trains_and_keeps_its_checkpoint(workdir):
    # seed.yaml's LearningRateMonitor needs a logger: Lightning would stop the run at its start with a traceback
    assert run_fit("--trainer.logger", "false", "--trainer.max_epochs", "1") == 0
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == ["checkpoints", "checkpoints/last.ckpt"]


def test_a_save_dir_under_home_in_a_config_file_holds_the_whole_run(workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir / "home"))
    config = workdir / "home_runs.yaml"
    config.write_text("trainer:\n  logger:\n    init_args:\n      save_dir: ~/runs\n")  # no shell expands it here
    assert run_fit("--config", str(config), "--trainer.max_epochs", "1") == 0
    run = workdir / "home" / "runs" / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert not (workdir / "~").exists()


def test_log_directory_that_cannot_be_written(workdir, capsys):
    (workdir / "logs_here").write_text("a file, not a directory")
    code = run_fit("--trainer.logger.init_args.save_dir", "logs_here/runs")
    err = capsys.readouterr().err
    assert code == 1 and "cannot write runs to logs_here/runs/lightning_logs" in err and "Traceback" not in err
    assert (workdir / "logs_here").read_text() == "a file, not a directory"


def test_train_returns_the_run_and_never_reads_the_test_set_for_model_selection(workdir, monkeypatch):
    """fit.train (what a study calls): with data.test=false only the validation split is evaluated, per epoch and
    at the end; it returns the run directory, the metrics (with the best checkpoint's score) and the wall time."""
    from fashion_cnn import data_files

    read = []
    real_load = data_files.load_split
    monkeypatch.setattr("fashion_cnn.datamodule.load_split",
                        lambda d, split, v: read.append(split) or real_load(d, split, v))

    class Seen(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, pl_module):
            Seen.epochs += 1

    result = fit.train([*SMALL, "--trainer.max_epochs", "2", "--data.val_size", "100", "--data.test", "false"],
                       callbacks=[Seen()])
    assert result.status == 0 and result.run_dir == workdir / "lightning_logs" / "version_0" and Seen.epochs == 2
    assert read == ["train"] and result.wall_s > 0
    assert "val/acc" in result.metrics and "best/val/acc" in result.metrics
    assert not any(k.startswith(("test/", "final/")) for k in result.metrics)
    assert not any(tag.startswith(("test", "final")) for tag in scalars(result.run_dir))


@pytest.mark.parametrize("config", ["fast", "tiny", "quick", "strong", "gpu"])
def test_every_shipped_config_trains_and_tests(config, workdir):
    # Here on the CPU, so the gpu preset's accelerator and bf16 are set aside; the rest is what it runs.
    cpu = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]
    result = fit.train(["--config", config, *SMALL, "--trainer.max_epochs", "1", *(cpu if config == "gpu" else [])])
    assert result.status == 0 and 0.0 <= result.metrics["final/test_acc"] <= 1.0
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file() and len(scalars(result.run_dir)["test/acc"]) == 1
    named = (yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text()).get("model") or {}).get("net")
    built = runs.run_config(result.run_dir)["model"]["net"]["class_path"]
    assert built == (named["class_path"] if named else "fashion_cnn.nets.SeedCNN")  # the network it names


@pytest.mark.parametrize("precision", ["64-true", "16-true"])
def test_a_true_precision_feeds_the_network_inputs_of_its_dtype(workdir, precision):
    # the batches are made float32 after the transfer, and the pictures of the last epoch are drawn outside the loop
    seen = set()

    class Inputs(Callback):  # every input the network gets: training, evaluation and the pictures' pass
        def on_fit_start(self, trainer, pl_module):
            pl_module.net.register_forward_pre_hook(lambda net, args: seen.add(args[0].dtype))

    result = fit.train([*SMALL, "--trainer.max_epochs", "1", "--trainer.precision", precision], callbacks=[Inputs()])
    assert result.status == 0 and 0.0 <= result.metrics["final/test_acc"] <= 1.0
    assert seen == {torch.float64 if precision == "64-true" else torch.float16}


@pytest.mark.parametrize(("precision", "native", "used"), [
    ("bf16-mixed", False, "32-true"), ("bf16-mixed", True, "bf16-mixed"), ("32-true", False, "32-true")])
def test_bfloat16_on_a_cpu_without_it_trains_in_float32_and_says_so(workdir, capsys, monkeypatch, precision, native,
                                                                   used):
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: native)
    monkeypatch.setattr(config, "_SAID", set())  # as in a new process
    for _ in range(2):  # a second fit in the same process (a study's next trial) is not told again
        result = fit.train([*SMALL, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                            "--trainer.precision", precision])
        assert result.status == 0 and runs.run_config(result.run_dir)["trainer"]["precision"] == used
    lines = [line for line in capsys.readouterr().err.splitlines() if "bfloat16" in line]
    assert lines == (["python -m fashion_cnn.fit: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where "
                      "bf16-mixed is emulated and several times slower: training in 32-true instead"]
                     if used != precision else [])


@pytest.mark.parametrize(("precision", "accelerator", "gpu", "native", "used"), [
    ("bf16-mixed", "cpu", True, False, "32-true"), ("bf16-true", "cpu", False, False, "32-true"),
    ("bf16", "auto", False, False, "32-true"), ("bf16-mixed", "auto", True, False, "bf16-mixed"),
    ("bf16-mixed", "gpu", False, False, "bf16-mixed"), ("bf16-mixed", "cpu", False, True, "bf16-mixed"),
    (None, "cpu", False, False, None), ("32-true", "cpu", False, False, "32-true"),
    # Lightning turns 16-mixed on a CPU into bf16-mixed: emulated without native bfloat16 too
    (16, "cpu", False, False, "32-true"), ("16-mixed", "cpu", False, False, "32-true"),
    ("16-mixed", "cpu", False, True, "16-mixed"), ("16-mixed", "gpu", False, False, "16-mixed")])
def test_only_bfloat16_on_a_cpu_without_it_falls_back(monkeypatch, precision, accelerator, gpu, native, used):
    monkeypatch.setattr(config, "cpu_has_bfloat16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert config.precision_for_this_cpu(precision, accelerator) == used

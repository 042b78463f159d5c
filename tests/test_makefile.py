"""The Makefile's targets pass their variables on as the commands' own arguments, paths with spaces included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Stands in for the venv's python: prints the environment's FASHION_MNIST_DIR and its arguments, as JSON.
PRINTER = (f"{sys.executable} -c 'import json, os, sys; "
           f"print(json.dumps([os.environ.get(\"FASHION_MNIST_DIR\"), *sys.argv[1:]]))'")


def make(*args: str) -> list[list]:
    """The commands a target runs, each as [FASHION_MNIST_DIR, *arguments]; setup is taken as done."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASHION_MNIST_DIR", "MAKEFLAGS", "MAKELEVEL", "CDPATH")}
    out = subprocess.run(["make", "-s", "-o", ".venv/.installed", f"PY={PRINTER}", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("[")]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_paths_with_spaces_reach_each_command_whole(tmp_path):
    data = tmp_path / "my data ü"
    data.mkdir()
    assert make("train", f"DATA_DIR={data}", "CONFIG=my config.yaml") == [
        [None, "-m", "fashion_cnn.data_files", "--data_dir", str(data)],
        [None, "-m", "fashion_cnn.fit", "--config", "my config.yaml", "--data.data_dir", str(data)]]
    # a study's trials find the data through the environment, as an absolute path
    study = make("study", f"DATA_DIR={data}", "STUDY=studies/my study.yaml")[-1]
    assert study == [str(data), "-m", "fashion_cnn.study", "studies/my study.yaml"]
    relative = make("study", f"DATA_DIR={os.path.relpath(data, REPO)}")[-1]  # made absolute for the trials
    assert relative[0] == str(data)
    assert make("report", "RUN=runs/version 1") == [[None, "-m", "fashion_cnn.report", "--run", "runs/version 1"]]

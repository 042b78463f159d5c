"""Seconds per epoch, side by side, in one run: the notebook's loop, the bare floor, and the project's entry point.

    python benchmarks/bench.py [--epochs 6] [--json benchmarks/results/bench.json]
    python benchmarks/bench.py --time-to 0.885 --config fast   # wall time to reach a test accuracy

Each variant runs in its own process on the same real data (batch 64, the seed CNN, SGD 0.01/0.5), so its peak
RSS is its own. An epoch is 60,000 training images plus the 10,000-image test. The variants take turns: all start
and load, then run epoch 1 one after another, then epoch 2, and so on, one process at a time (a round per epoch).
Seconds per epoch are the median over the rounds after the first (warm-up); a ratio between two variants is the
median of their per-round ratios, so a slow spell on a shared machine scales both sides of each. Even so, compare
the ratios, not the seconds.

- notebook: the notebook's code (torchvision's FashionMNIST class, per-image ToTensor + Normalize, DataLoader).
- floor:    the same SGD steps on normalised tensors already in memory; no framework, no logging.
- floor_cl: the floor with the network in channels-last memory format (what the seed config uses).
- project:  ``python -m fashion_cnn.fit --config seed`` (Lightning, torchmetrics, TensorBoard, checkpoints).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def notebook_worker(epochs: int, target: float | None, data_dir: str) -> None:
    """The notebook's cells, as written there (only the data path and the prints differ)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torchvision import datasets, transforms

    from fashion_cnn.data_files import SPLITS, file_name, locate

    torch.manual_seed(0)
    # torchvision's class reads decompressed files from root/FashionMNIST/raw; give it the real ones.
    root = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    source = locate(data_dir, allow_download=False)
    for split in SPLITS:
        for kind in ("images", "labels"):
            name = file_name(split, kind)
            gz = source / f"{name}.gz"
            (raw / name).write_bytes(gzip.decompress(gz.read_bytes()) if gz.exists() else (source / name).read_bytes())

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = torch.utils.data.DataLoader(datasets.FashionMNIST(str(root), train=True, transform=transform),
                                               batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(datasets.FashionMNIST(str(root), train=False, transform=transform),
                                              batch_size=64, shuffle=True)

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
            self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
            self.drop = nn.Dropout2d()
            self.fc1 = nn.Linear(320, 50)
            self.fc2 = nn.Linear(50, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2(x), 2))
            x = x.view(-1, 320)
            x = F.relu(self.fc1(x))
            x = self.drop(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    model = CNN()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        wait_for_turn()
        t0 = time.perf_counter()
        model.train()
        for batch_idx, (data, target_) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target_)
            loss.backward()
            optimizer.step()
            if batch_idx % 200 == 0:
                loss.item()  # the notebook prints it
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target_ in test_loader:
                correct += model(data).max(1, keepdim=True)[1].eq(target_.view(-1, 1)).sum().item()
        acc = correct / len(test_loader.dataset)
        report(epoch=epoch, seconds=time.perf_counter() - t0, acc=acc, elapsed=time.perf_counter() - start)
        if target is not None and acc >= target:
            break


def floor_worker(epochs: int, target: float | None, data_dir: str, channels_last: bool = False) -> None:
    """The same SGD steps on tensors already in memory: the hardware's floor for this recipe
    (in the notebook's NCHW memory format, or channels-last as the project's seed config uses)."""
    import torch
    import torch.nn.functional as F

    from fashion_cnn.data_files import MEAN, STD, load_split, locate
    from fashion_cnn.nets import SeedCNN

    torch.manual_seed(0)
    source = locate(data_dir, allow_download=False)

    def prepared(split):
        images, labels = load_split(source, split)
        return ((images.float() / 255 - MEAN) / STD).unsqueeze(1), labels

    (x, y), (xt, yt) = prepared("train"), prepared("test")
    model = SeedCNN()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        wait_for_turn()
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            batches = zip(xt.split(1000), yt.split(1000), strict=True)
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
        acc = correct / len(yt)
        report(epoch=epoch, seconds=time.perf_counter() - t0, acc=acc, elapsed=time.perf_counter() - start)
        if target is not None and acc >= target:
            break


def report(**values: float) -> None:
    print("BENCH " + json.dumps(values), flush=True)


EPOCH_LINE = re.compile(r"^\[(\d+)\] .*Test loss [\d.]+, accuracy ([\d.]+)% \(([\d.]+) s\)")
READY = "BENCH-READY"


def wait_for_turn() -> None:
    """With turns on (``BENCH_TURNS=1``): tell the benchmark this process is ready for its next epoch, then block
    until it says go. Without turns, return at once."""
    if os.environ.get("BENCH_TURNS") != "1":
        return
    print(READY, flush=True)
    if not sys.stdin.readline():
        raise SystemExit("the benchmark went away")


def command(name: str, epochs: int, config: str, target: float | None, data_dir: str, turns: bool) -> list[str]:
    """The command line that runs one variant in a fresh process."""
    if name == "project":
        logs = tempfile.mkdtemp(prefix="bench-logs-")
        cmd = [sys.executable, "-m", "fashion_cnn.fit", "--config", config, "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", logs, "--data.data_dir", data_dir]
        if target is None:  # timing epochs; to reach a target, the config's own schedule decides the length
            cmd += ["--trainer.max_epochs", str(epochs)]
        if turns:
            cmd += ["--trainer.callbacks+=benchmarks.turns.TakeTurns"]
        return cmd
    cmd = [sys.executable, __file__, "--worker", name, "--epochs", str(epochs), "--data_dir", data_dir]
    return cmd + (["--time-to", str(target)] if target is not None else [])


class Variant:
    """One variant's process: its output, its epochs and, once it has ended, its peak RSS.

    With ``turns`` the process waits before each epoch until :meth:`run_epoch` lets it go, and an epoch's
    ``seconds`` are timed here, from go until the process is ready for the next epoch (or has printed its last).
    Without, the process runs straight through and ``seconds`` are what it reports. Each epoch also records
    ``wall``: seconds since the process was started (imports and data loading included).
    """

    def __init__(self, name: str, cmd: list[str], turns: bool) -> None:
        self.name, self.turns, self.lines, self.epochs = name, turns, [], []
        env = os.environ | {"BENCH_TURNS": "1" if turns else "0"}
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE if turns else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.alive = True

    def read(self, go: float | None = None) -> None:
        """Read output until the process is ready for its next turn or has ended, recording its epochs."""
        for line in self.proc.stdout:
            now = time.perf_counter()
            if line.strip() == READY:
                if go is not None and self.epochs:
                    self.epochs[-1]["seconds"] = now - go
                return
            self.lines.append(line)
            if line.startswith("BENCH "):
                epoch = json.loads(line[6:])
            elif match := EPOCH_LINE.search(line):
                epoch = {"epoch": int(match.group(1)), "acc": float(match.group(2)) / 100,
                         "seconds": float(match.group(3))}
            else:
                continue
            self.epochs.append(epoch | {"wall": now - self.start} | ({"seconds": now - go} if go else {}))
        self.alive = False

    def run_epoch(self) -> None:
        """Let the waiting process run one epoch; return when it waits again (or has ended)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.read(go=time.perf_counter())

    def result(self, target: float | None) -> dict:
        """Wait for the process to end; its per-epoch times and accuracies, and its peak RSS."""
        if self.turns:
            self.proc.stdin.close()
        self.read()
        _, _, usage = os.wait4(self.proc.pid, 0)
        if not self.epochs:
            sys.exit(f"{self.name} produced no epochs:\n{''.join(self.lines[-20:])}")
        timed = [e["seconds"] for e in self.epochs[1:]] or [self.epochs[0]["seconds"]]
        result = {"seconds_per_epoch": statistics.median(timed), "peak_rss_gb": usage.ru_maxrss / 2**20,
                  "epochs": self.epochs, "wall_seconds": time.perf_counter() - self.start}
        if target is not None:
            reached = next((e for e in self.epochs if e["acc"] >= target), None)
            result["epochs_to_target"] = reached and reached["epoch"]
            result["wall_to_target"] = reached and reached["wall"]
            result["epoch_seconds_to_target"] = reached and sum(e["seconds"] for e in self.epochs[: reached["epoch"]])
        return result


def paired_ratio(a: dict, b: dict) -> float:
    """a's epoch time over b's, as the median over the timed rounds of the two epochs run one after the other in
    the same round: a slow spell on the machine then scales both sides of each ratio."""
    pairs = [x["seconds"] / y["seconds"] for x, y in zip(a["epochs"][1:], b["epochs"][1:], strict=False)]
    return statistics.median(pairs) if pairs else a["seconds_per_epoch"] / b["seconds_per_epoch"]


def run_in_turns(names: list[str], epochs: int, config: str, data_dir: str) -> dict[str, dict]:
    """Start every variant, let each load, then run their epochs in rotation, one process at a time."""
    variants = [Variant(name, command(name, epochs, config, None, data_dir, turns=True), turns=True)
                for name in names]
    for variant in variants:  # imports and data loading, all at once: none of it is timed
        variant.read()
    for epoch in range(1, epochs + 1):
        print(f"epoch {epoch}:", end="", flush=True)
        for variant in variants:
            if variant.alive:
                variant.run_epoch()
                last = variant.epochs[-1] if variant.epochs else {"seconds": float("nan")}
                print(f"  {variant.name} {last['seconds']:.2f} s", end="", flush=True)
        print()
    return {variant.name: variant.result(None) for variant in variants}


def run_one_by_one(names: list[str], epochs: int, config: str, target: float, data_dir: str) -> dict[str, dict]:
    """Run each variant to the end on its own (time to a target accuracy counts from the process's start)."""
    results = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        results[name] = Variant(name, command(name, epochs, config, target, data_dir, turns=False),
                                turns=False).result(target)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (the first is a warm-up)")
    parser.add_argument("--config", default="seed", help="the project's config for the 'project' variant")
    parser.add_argument("--variants", default="notebook,floor,floor_cl,project")
    parser.add_argument("--time-to", type=float, default=None, dest="target",
                        help="instead: train until this test accuracy (e.g. 0.885) and report the time to it")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench.json")
    parser.add_argument("--data_dir", default="data", help="as the DataModule's data_dir (default: data)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        workers = {"notebook": notebook_worker, "floor": floor_worker,
                   "floor_cl": lambda e, t, d: floor_worker(e, t, d, channels_last=True)}
        workers[args.worker](args.epochs, args.target, str(Path(args.data_dir).resolve()))
        return

    names, data_dir = args.variants.split(","), str(Path(args.data_dir).resolve())
    if args.target is None:
        results = run_in_turns(names, args.epochs, args.config, data_dir)
    else:
        results = run_one_by_one(names, args.epochs, args.config, args.target, data_dir)
    for name, r in results.items():
        print(f"  {name:<9} {r['seconds_per_epoch']:6.2f} s/epoch   peak RSS {r['peak_rss_gb']:.2f} GB   "
              f"test acc {r['epochs'][-1]['acc']:.4f}", flush=True)
    print()
    if args.target is not None:
        for name, r in results.items():
            if r["epochs_to_target"]:
                print(f"{name:<9} reached {args.target:.1%} at epoch {r['epochs_to_target']}: "
                      f"{r['wall_to_target']:.1f} s after starting ({r['epoch_seconds_to_target']:.1f} s in epochs)")
            else:
                print(f"{name:<9} did not reach {args.target:.1%} in {len(r['epochs'])} epochs")
        if all(r["epochs_to_target"] for r in results.values()) and {"notebook", "project"} <= set(results):
            ratio = results["project"]["wall_to_target"] / results["notebook"]["wall_to_target"]
            print(f"project/notebook time to {args.target:.1%}: {ratio:.3f} (1/{1 / ratio:.1f})")
    else:
        base = results.get("project")
        ratios = {}
        for other in ("notebook", "floor", "floor_cl"):
            if base and other in results:
                ratios[other] = {"time": paired_ratio(base, results[other]),
                                 "peak_rss": base["peak_rss_gb"] / results[other]["peak_rss_gb"]}
                print(f"project/{other:<8} time {ratios[other]['time']:5.2f}x   "
                      f"peak RSS {ratios[other]['peak_rss']:5.2f}x")
        results["project_ratios"] = ratios
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

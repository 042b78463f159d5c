"""The benchmark's yardsticks, one function per variant: the notebook's own loop and the bare floor.

Each trains for ``epochs`` epochs (or until the test accuracy reaches ``target``), waits for its turn before each
epoch and reports each epoch as a ``BENCH`` line (see turns.py). bench.py runs each in a fresh process, as
``python -c "from benchmarks import workers; workers.floor(6, None, '/data')"``. Nothing here imports Lightning:
these processes' peak RSS is measured against the project's.
"""

from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

from benchmarks.turns import report, wait_for_turn


def notebook(epochs: int, target: float | None, data_dir: str) -> None:
    """The notebook's cells, as written there (only the data path and the prints differ): torchvision's
    FashionMNIST class, per-image ``ToTensor`` + ``Normalize`` with MNIST's statistics, a DataLoader of 64."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torchvision import datasets, transforms

    from fashion_cnn.data_files import FILE_SPLITS, file_name, locate

    torch.manual_seed(0)
    # torchvision's class reads decompressed files from root/FashionMNIST/raw; give it the real ones.
    root = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    source = locate(data_dir, allow_download=False)
    for split in FILE_SPLITS:
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
        report(epoch=epoch, seconds=time.perf_counter() - t0, acc=acc)
        if target is not None and acc >= target:
            break


def floor(epochs: int, target: float | None, data_dir: str, channels_last: bool = False) -> None:
    """The same SGD steps on normalised tensors already in memory, with no framework and no logging: the
    hardware's floor for this recipe (in the notebook's NCHW memory format, or channels-last)."""
    import torch
    import torch.nn.functional as F

    from fashion_cnn.data_files import MEAN, STD, load_split, locate
    from fashion_cnn.nets import SeedCNN

    torch.manual_seed(0)
    source = locate(data_dir, allow_download=False)

    def prepared(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_split(source, split)
        return ((images.float() / 255 - MEAN) / STD).unsqueeze(1), labels

    (x, y), (xt, yt) = prepared("train"), prepared("test")
    model = SeedCNN()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
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
        report(epoch=epoch, seconds=time.perf_counter() - t0, acc=acc)
        if target is not None and acc >= target:
            break


def floor_cl(epochs: int, target: float | None, data_dir: str) -> None:
    """The floor with the network in channels-last memory format, as the project's seed config runs it."""
    floor(epochs, target, data_dir, channels_last=True)

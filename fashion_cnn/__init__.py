"""fashion_cnn: a fast, reproducible PyTorch Lightning experiment on FashionMNIST."""

__version__ = "0.1.0"

"""fashion_cnn: a fast, reproducible PyTorch Lightning experiment on FashionMNIST."""

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

__version__ = "0.1.0"

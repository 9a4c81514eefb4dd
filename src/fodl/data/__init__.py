from fodl.data.loader import TensorLoader
from fodl.data.mnist import MNISTDataModule

__all__ = ["TensorLoader", "MNISTDataModule"]

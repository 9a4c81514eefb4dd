from fodl.nets.cnn import MNISTConvNet
from fodl.nets.mlp import MLP

__all__ = ["MLP", "MNISTConvNet"]

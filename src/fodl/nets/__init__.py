from fodl.nets.autoencoder import Autoencoder
from fodl.nets.cnn import CIFARConvNet, MNISTConvNet
from fodl.nets.mlp import MLP
from fodl.nets.rl import ActionMLP, NatureCNN
from fodl.nets.skipgram import SkipGramNet

__all__ = ["MLP", "MNISTConvNet", "CIFARConvNet", "Autoencoder", "SkipGramNet", "ActionMLP", "NatureCNN"]

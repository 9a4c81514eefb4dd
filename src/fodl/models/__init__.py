from fodl.models.autoencoder import AutoencoderModule
from fodl.models.classifier import ClassifierModule
from fodl.models.dqn import DQNModule
from fodl.models.policy_gradient import PolicyGradientModule
from fodl.models.skipgram import SkipGramModule

__all__ = ["ClassifierModule", "AutoencoderModule", "SkipGramModule", "DQNModule", "PolicyGradientModule"]

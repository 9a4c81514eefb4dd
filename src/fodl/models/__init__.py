from fodl.models.autoencoder import AutoencoderModule
from fodl.models.classifier import ClassifierModule
from fodl.models.dqn import DQNModule
from fodl.models.policy_gradient import PolicyGradientModule

__all__ = ["ClassifierModule", "AutoencoderModule", "DQNModule", "PolicyGradientModule"]

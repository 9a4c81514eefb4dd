from fodl.models.autoencoder import AutoencoderModule
from fodl.models.classifier import ClassifierModule

__all__ = ["ClassifierModule", "AutoencoderModule"]

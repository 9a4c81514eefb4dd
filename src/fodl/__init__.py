"""fodl: the models of *Fundamentals of Deep Learning* as Lightning + Hydra experiments."""

from fodl.errors import FodlError

__all__ = ["FodlError"]
__version__ = "0.1.0"

from fodl.models.classifier import ClassifierModule

__all__ = ["ClassifierModule"]

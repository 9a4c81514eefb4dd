from fodl.nets.mlp import MLP

__all__ = ["MLP"]

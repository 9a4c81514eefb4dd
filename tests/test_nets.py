import math

import pytest
import torch

from fodl.nets import MLP


def test_logreg_is_zero_initialised_linear_map():
    net = MLP(hidden=[], init="zeros")
    assert sum(p.abs().sum() for p in net.parameters()) == 0
    out = net(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.all(out == 0)


def test_mlp_he_normal_init_statistics():
    torch.manual_seed(0)
    net = MLP(hidden=[256, 256], init="he_normal")
    w = net.layers[0].weight
    assert w.shape == (256, 784)
    assert abs(w.std().item() - math.sqrt(2 / 784)) < 0.002
    assert torch.all(net.layers[0].bias == 0)


def test_output_relu_matches_book_code():
    net = MLP(hidden=[8], output_activation="relu")
    assert isinstance(net.layers[-1], torch.nn.ReLU)
    assert (net(torch.randn(16, 784)) >= 0).all()
    with pytest.raises(ValueError):
        MLP(output_activation="tanh")

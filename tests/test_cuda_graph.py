"""model.cuda_graph: graphed forward/backward trains exactly like the eager net (GPU tests run
where a GPU is present and are skipped elsewhere); clear errors where it cannot run."""

import pytest
import torch
from torch import nn

from conftest import train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError
from fodl.models import ClassifierModule
from fodl.train import train

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(tmp_path, data_dir, *overrides, run="run"):
    return train_cfg(tmp_path, data_dir, "test=false", "model=mnist_mlp", *overrides, run=run)


def test_cuda_graph_on_cpu_is_a_clear_error(tmp_path, tiny_mnist):
    cfg = _cfg(tmp_path, tiny_mnist, "trainer.accelerator=cpu", "model.cuda_graph=true",
               "trainer.max_epochs=1")
    with pytest.raises(FodlError, match=r"model\.cuda_graph=true .* needs a GPU.*trainer=gpu"):
        train(cfg)


@gpu
def test_graphed_training_equals_eager_training(tmp_path, tiny_mnist):
    # 1000 training images in batches of 64: the last batch (40) takes the eager path
    common = ["trainer=gpu", "trainer.max_epochs=2", "data.batch_size=64", "optimizer=momentum"]
    eager = train(_cfg(tmp_path, tiny_mnist, *common, run="eager"))
    graphed = train(_cfg(tmp_path, tiny_mnist, *common, "model.cuda_graph=true", run="graphed"))
    assert graphed["val/acc"] == pytest.approx(eager["val/acc"], abs=1e-6)
    a = read_checkpoint(tmp_path / "eager" / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_checkpoint(tmp_path / "graphed" / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@gpu
def test_capture_leaves_batch_norm_statistics_alone_and_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).cuda()
    m = ClassifierModule(net, optimizer=lambda params: torch.optim.SGD(params, 0.1), cuda_graph=True)
    x = torch.randn(32, 8, device="cuda")
    before = [b.clone() for b in net.buffers()]
    m.capture_graph(x)
    for b, s in zip(net.buffers(), before):
        torch.testing.assert_close(b, s, rtol=0, atol=0)
    x2 = torch.randn(32, 8, device="cuda")
    graphed = net(x2)                              # replays the graph
    eager = nn.Sequential.forward(net, x2)         # the original forward
    torch.testing.assert_close(graphed, eager)

"""Chapter 6 autoencoders: the net, the module's loss/corruption/sparsity, training through the
real train() path, TensorBoard summaries, best-checkpoint choice, and the PCA comparison."""

import json
import math
import re
import runpy
import sys

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import ROOT, SHARED_DATA, compose_train, make_mnist_like, shared_file, train_cfg
from fodl.analysis.autoencoder import compare
from fodl.errors import FodlError
from fodl.models import AutoencoderModule
from fodl.models.autoencoder import corrupt, eval_corrupt, sparsity_penalty
from fodl.nets import Autoencoder
from fodl.schema import check_config
from fodl.train import train

# a small net and a fast learning rate: tiny data trains in a few seconds
SMALL = ("model=autoencoder", "model.net.hidden=[64,32]", "optimizer.lr=0.01", "data.batch_size=50",
         "model.projector_size=100")


# -- the net ------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [2, 30])
def test_book_net_shapes_and_layers(code):
    torch.manual_seed(0)
    net = Autoencoder(code_size=code)
    x = torch.rand(5, 1, 28, 28)
    z = net.encode(x)
    assert z.shape == (5, code) and net.decode(z).shape == (5, 784) and net(x).shape == (5, 784)
    assert ((z > 0) & (z < 1)).all()  # sigmoid codes
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 1000), (1000, 500), (500, 250), (250, code), (code, 250), (250, 500), (500, 1000), (1000, 784)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    sigmoids = [m for m in net.modules() if isinstance(m, nn.Sigmoid)]
    assert len(norms) == len(sigmoids) == 8  # every layer, code and output included
    assert all(m.eps == 1e-3 and m.momentum == 0.1 for m in norms)  # TF eps, EMA decay 0.9
    w = linears[0].weight
    assert abs(w.std().item() - math.sqrt(1 / 784)) < 0.001 and (linears[0].bias == 0).all()


def test_net_options():
    net = Autoencoder(in_features=16, hidden=[8], code_size=3, init="he_normal")
    assert net(torch.rand(4, 16)).shape == (4, 16)
    assert abs(net.encoder[0].weight.std().item() - math.sqrt(2 / 16)) < 0.1
    with pytest.raises(ValueError, match="unknown init"):
        Autoencoder(init="xavier")
    with pytest.raises(ValueError, match="unknown code_activation 'softmax'"):
        Autoencoder(code_activation="softmax")


def test_hinton_style_variant_layers():
    """code_activation / hidden_activation / output_batch_norm change only the layers they name."""
    torch.manual_seed(0)
    net = Autoencoder(in_features=16, hidden=[8, 6], code_size=3, code_activation="linear",
                      hidden_activation="relu", output_batch_norm=False)
    acts = [type(m).__name__ for m in [*net.encoder, *net.decoder] if not isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    # encoder 16-8-6-3: relu, relu, linear code; decoder 3-6-8-16: relu, relu, (no norm) sigmoid
    assert acts == ["ReLU", "ReLU", "Identity", "ReLU", "ReLU", "Identity", "Sigmoid"]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 5  # not the output layer
    assert isinstance(net.decoder[-2], nn.Identity) and isinstance(net.encoder[-2], nn.BatchNorm1d)
    z = net.encode(torch.rand(64, 16))
    assert (z < 0).any() and (z > 1).any()  # a linear code is not squashed into (0, 1)
    # the output layer is sigmoid(xW + b): a large negative bias gives ~0 outputs whatever the batch
    net.eval()
    with torch.no_grad():
        net.decoder[-3].bias.fill_(-20.0)
    assert net(torch.rand(4, 16)).max() < 1e-6
    # the same state-dict keys as the book's net (Identity keeps the layer indices)
    book = Autoencoder(in_features=16, hidden=[8, 6], code_size=3)
    assert set(net.state_dict()) < set(book.state_dict())


def test_hidden_dropout_sits_after_hidden_layers_only():
    net = Autoencoder(in_features=16, hidden=[8, 6], code_size=3, hidden_dropout=0.2)
    kinds = [[type(m).__name__ for m in part] for part in (net.encoder, net.decoder)]
    # per part: two hidden layers (Linear, BatchNorm1d, act, Dropout), then code / output
    for k in kinds:
        assert k.count("Dropout") == 2 and k[-1] != "Dropout" and k[3] == k[7] == "Dropout"
    net.eval()
    x = torch.rand(4, 16)
    assert torch.equal(net(x), net(x))  # off in evaluation
    assert not any(isinstance(m, nn.Dropout) for m in Autoencoder(16, [8, 6], 3).modules())
    with pytest.raises(ValueError, match="hidden_dropout"):
        Autoencoder(16, [8], 3, hidden_dropout=1.0)


# -- corruption and sparsity ----------------------------------------------------------------
def test_corruption_drops_exactly_the_fraction_per_image():
    x = torch.rand(64, 1, 28, 28) * 0.9 + 0.1  # no zero pixels before
    c = corrupt(x, 0.5, torch.Generator().manual_seed(0))
    assert c.shape == x.shape and (x >= 0.1).all()  # the input is left alone
    zeros = (c == 0).flatten(1).sum(1)
    assert (zeros == 392).all()
    kept = c != 0
    assert torch.equal(c[kept], x[kept])
    assert not torch.equal(kept[0], kept[1])  # a different mask per image
    assert ((corrupt(x, 0.25) == 0).flatten(1).sum(1) == 196).all()
    assert torch.equal(eval_corrupt(x, 0.5, 3), eval_corrupt(x, 0.5, 3))  # fixed evaluation noise
    assert not torch.equal(eval_corrupt(x, 0.5, 3), eval_corrupt(x, 0.5, 4))
    assert corrupt(x, 0.0) is x


def test_sparsity_penalty_values():
    z = torch.full((10, 4), 0.05)
    assert sparsity_penalty(z, "kl", 0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert sparsity_penalty(z + 0.45, "kl", 0.05).item() > 1.0
    assert sparsity_penalty(z, "l1", 0.05).item() == pytest.approx(0.2)


def _module(tmp_path, *overrides):
    cfg = compose_train(["model=autoencoder", "model.net.hidden=[32]", "model.net.code_size=4",
                         *overrides], tmp_path / "r")
    return instantiate(cfg.model)


@pytest.mark.parametrize("kind", ["l1", "kl"])
def test_sparsity_adds_its_penalty_to_the_loss_and_gradient(tmp_path, kind):
    torch.manual_seed(0)
    plain = _module(tmp_path)
    sparse = _module(tmp_path, f"model.sparsity={kind}", "model.sparsity_weight=0.5")
    sparse.load_state_dict(plain.state_dict())
    batch = (torch.rand(16, 1, 28, 28), torch.zeros(16, dtype=torch.long))
    torch.manual_seed(1)
    loss_plain = plain.training_loss(batch)
    loss_plain.backward()
    loss_sparse = sparse.training_loss(batch)
    loss_sparse.backward()
    z = sparse.net.encode(batch[0])
    assert (loss_sparse - loss_plain).item() == pytest.approx(
        0.5 * sparsity_penalty(z, kind, 0.05).item(), rel=1e-4)
    code_layer = sparse.net.encoder[-3]  # Linear into the code
    assert not torch.allclose(code_layer.weight.grad, plain.net.encoder[-3].weight.grad)
    decoder_out = sparse.net.decoder[-3]  # the penalty does not reach the decoder
    torch.testing.assert_close(decoder_out.weight.grad, plain.net.decoder[-3].weight.grad)


def test_bce_loss_is_the_pixel_cross_entropy_and_trains(tmp_path):
    torch.manual_seed(0)
    module = _module(tmp_path, "model.loss=bce")
    x = torch.rand(8, 1, 28, 28)
    x_hat = module.net(x)
    expected = -(x.flatten(1) * x_hat.log() + (1 - x.flatten(1)) * (1 - x_hat).log()).sum(1).mean()
    assert module.training_loss((x, None)).item() == pytest.approx(expected.item(), rel=1e-5)
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = module.training_loss((x, None))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_bad_options_are_clear_errors(tmp_path):
    """Single values are checked by the schema (fodl's one validation story), relations between
    values by the module's constructor: both end in one FodlError naming the option."""
    from fodl.schema import check_config

    def error(*overrides) -> str:
        cfg = compose_train(["model=autoencoder", "model.net.hidden=[32]", "model.net.code_size=4",
                             *overrides], tmp_path / "r")
        try:
            check_config(cfg)
        except FodlError as e:
            return str(e)
        with pytest.raises(Exception) as info:  # Hydra's InstantiationException wraps it
            instantiate(cfg.model)
        cause = info.value if isinstance(info.value, FodlError) else info.value.__cause__
        assert isinstance(cause, FodlError), info.value
        return str(cause)

    assert "model.sparsity='dense'" in error("model.sparsity=dense")
    assert "'l1', 'kl'" in error("model.sparsity=dense")
    assert "positive model.sparsity_weight" in error("model.sparsity=kl")
    assert "model.noise_fraction=1.5" in error("model.noise_fraction=1.5")
    assert "model.loss='mse'" in error("model.loss=mse") and "'l2', 'bce'" in error("model.loss=mse")
    assert "model.cuda_graph=false" in error("model.sparsity=l1", "model.sparsity_weight=1",
                                             "model.cuda_graph=true")
    with pytest.raises(FodlError, match="encode"):
        AutoencoderModule(nn.Linear(4, 4), optimizer=None)


def test_configs_select_the_book_setup(tmp_path):
    cfg = compose_train(["model=autoencoder"], tmp_path / "r")
    assert cfg.model.net.hidden == [1000, 500, 250] and cfg.model.net.code_size == 30
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.data.batch_size == 100 and cfg.trainer.max_epochs == 500
    assert (cfg.monitor, cfg.monitor_mode, cfg.optimized_metric) == ("val/l2", "min", "val/l2")
    assert compose_train(["experiment=book/ch6_autoencoder_2d"], tmp_path / "r").model.net.code_size == 2
    d = compose_train(["experiment=book/ch6_denoising"], tmp_path / "r")
    assert d.model.noise_fraction == 0.5 and d.monitor == "val/l2_corrupted"
    assert compose_train(["experiment=book/ch6_sparse"], tmp_path / "r").model.sparsity == "kl"
    fast = compose_train(["experiment=fast/autoencoder"], tmp_path / "r")
    assert fast.model.net.hidden == [1000, 500, 250] and fast.model.net.code_size == 30
    lin = compose_train(["experiment=fast/autoencoder_linear_code"], tmp_path / "r").model.net
    assert (lin.code_activation, lin.hidden_activation, lin.output_batch_norm) == ("linear", "relu", False)
    assert lin.hidden == [1000, 500, 250] and lin.code_size == 30
    with pytest.raises(FodlError, match="model.net.code_activation='softmax'.*'sigmoid', 'linear'"):
        check_config(compose_train(["model=autoencoder", "model.net.code_activation=softmax"], tmp_path / "r"))
    net = instantiate(cfg.model.net)  # the book's net is the default: sigmoid + batch norm everywhere
    assert sum(isinstance(m, nn.Sigmoid) for m in net.modules()) == 8
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 8


# -- training through train() ---------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Small autoencoders trained on tiny MNIST-format data: plain 30-d and 2-d, denoising,
    KL-sparse (run once for the tests below)."""
    root = tmp_path_factory.mktemp("ae")
    data = make_mnist_like(root / "data")
    common = (*SMALL, "trainer.max_epochs=6", "data.val_size=200")
    out = {}
    for name, extra in {"ae30": [], "ae2": ["model.net.code_size=2", "test=false"],
                        "denoising": ["model.noise_fraction=0.5", "test=false"],
                        "sparse": ["model.sparsity=kl", "model.sparsity_weight=1", "test=false"]}.items():
        out[name] = (train(train_cfg(root, data, *common, *extra, run=name)), root / name)
    out["data"] = data
    return out


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0, "images": 0,
                                                                        "scalars": 0}).Reload()


def test_training_lowers_the_loss_and_logs_the_metrics(runs):
    metrics, run_dir = runs["ae30"]
    assert {"val/l2", "val/sse", "test/l2", "test/sse", "test/code_mean"} <= set(metrics)
    assert "val/l2_corrupted" not in metrics  # only with evaluation noise
    acc = _scalars(run_dir)
    train_loss = [s.value for s in acc.Scalars("train/loss")]
    val_l2 = [s.value for s in acc.Scalars("val/l2")]
    assert len(val_l2) == 6 and train_loss[-1] < 0.8 * train_loss[0] and val_l2[-1] < 0.8 * val_l2[0]
    assert metrics["test/sse"] >= metrics["test/l2"] ** 2 * 0.99  # mean of squares >= square of mean
    assert "val/reconstructions" in acc.Tags()["images"] and "val/codes" in acc.Tags()["histograms"]
    projector = list((run_dir / "tensorboard").rglob("metadata.tsv"))
    assert projector and len(projector[0].read_text().split()) == 100  # 100 test labels
    assert (projector[0].parent / "sprite.png").is_file()


def test_best_checkpoint_has_the_lowest_val_l2(runs):
    _, run_dir = runs["ae30"]
    val_l2 = [s.value for s in _scalars(run_dir).Scalars("val/l2")]
    best = [p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")]
    assert len(best) == 1
    epoch, score = re.match(r"epoch(\d+)-best([\d.]+)\.ckpt", best[0]).groups()
    assert int(epoch) == val_l2.index(min(val_l2)) and float(score) == pytest.approx(min(val_l2), abs=1e-4)


def test_denoising_reports_corrupted_errors_and_draws_three_rows(runs):
    metrics, run_dir = runs["denoising"]
    assert metrics["val/l2_corrupted"] > 0 and "val/sse_corrupted" in metrics
    acc = _scalars(run_dir)
    image = acc.Images("val/reconstructions")[-1]
    assert image.height == 3 * 28 + 4 * 2  # inputs, corrupted inputs, reconstructions


def test_sparsity_lowers_the_mean_code_activation(runs):
    sparse, plain = runs["sparse"][0], runs["ae30"][0]
    assert sparse["val/code_mean"] < 0.6 * plain["val/code_mean"]
    assert "train/sparsity_penalty" in sparse and "val/sparsity_penalty" in sparse


# -- the PCA comparison ---------------------------------------------------------------------
def _best(run_dir):
    return str(next((run_dir / "checkpoints").glob("epoch*.ckpt")))


def test_autoencoder_vs_pca_script_end_to_end(runs, tmp_path, monkeypatch, capsys):
    args = ["--ae2", _best(runs["ae2"][1]), "--ae30", _best(runs["ae30"][1]),
            "--denoising", _best(runs["denoising"][1]), "--out", str(tmp_path / "out"),
            "--data-dir", str(runs["data"]), "--n-scatter", "200",
            "--metrics-json", str(tmp_path / "row" / "metrics.json")]
    script = runpy.run_path(str(ROOT / "scripts" / "autoencoder_vs_pca.py"), run_name="script")
    monkeypatch.setattr(sys, "argv", ["autoencoder_vs_pca.py", *args])
    assert script["main"]() == 0
    numbers = json.loads((tmp_path / "row" / "metrics.json").read_text())  # the pipeline's row
    assert set(numbers) >= {"pca-30/sse", "autoencoder-30/sse", "pca-2/knn", "autoencoder-2/knn",
                            "pca-30/l2_corrupted", "denoising_autoencoder-30/l2_corrupted"}
    assert f"{numbers['pca-30/sse']:.2f}" in (tmp_path / "out" / "autoencoder_vs_pca.md").read_text()
    for name in ("codes_2d.png", "reconstructions_30d.png", "denoising.png"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000, name
    table = (tmp_path / "out" / "autoencoder_vs_pca.md").read_text()
    assert table in capsys.readouterr().out
    for name in ("PCA-2", "autoencoder-2", "PCA-30", "autoencoder-30", "denoising autoencoder-30"):
        assert f"| {name} |" in table
    assert "50% pixels dropped" in table


def test_comparison_numbers_match_the_test_metrics(runs, tmp_path):
    metrics, run_dir = runs["ae30"]
    result = compare(tmp_path, ae30=_best(run_dir), data_dir=str(runs["data"]), noise_fraction=0.5)
    ae = next(r for r in result.rows if r.name == "autoencoder-30")
    assert ae.l2 == pytest.approx(metrics["test/l2"], rel=1e-4)
    assert ae.sse == pytest.approx(metrics["test/sse"], rel=1e-4)
    pca = next(r for r in result.rows if r.name == "PCA-30")
    assert pca.l2_corrupted > pca.l2 and 0 <= pca.knn <= 1


def test_wrong_checkpoints_are_clear_errors(runs, tmp_path):
    data = str(runs["data"])
    with pytest.raises(FodlError, match="--ae2 needs an autoencoder with a 2-d code"):
        compare(tmp_path, ae2=_best(runs["ae30"][1]), data_dir=data)
    with pytest.raises(FodlError, match="at least one checkpoint"):
        compare(tmp_path, data_dir=data)
    train(train_cfg(tmp_path, runs["data"], "model=logreg", "trainer.max_epochs=1", "test=false"))
    with pytest.raises(FodlError, match=r"ClassifierModule \(model=.*not of an autoencoder"):
        compare(tmp_path, ae30=str(tmp_path / "run" / "checkpoints" / "last.ckpt"), data_dir=data)


# -- real MNIST -----------------------------------------------------------------------------
@pytest.mark.realdata
def test_book_autoencoder_learns_real_mnist(tmp_path):
    shared_file("mnist", "train-images-idx3-ubyte.gz")
    cfg = train_cfg(tmp_path, SHARED_DATA, "model=autoencoder", "optimizer.lr=0.02", "data.batch_size=250",
                    "trainer.max_epochs=1", "+trainer.limit_train_batches=200",
                    "callbacks.parameter_summaries.every_n_epochs=100", "model.projector_size=0")
    metrics = train(cfg)
    # predicting the mean training image scores L2 7.21 / SSE 52.9 on the test set; PCA-30 3.66 / 13.9
    assert metrics["test/l2"] < 6.0 and metrics["test/sse"] < 40, metrics

"""Chapter 5: CIFAR-10 readers (both layouts), the book's augmentations, the CNNs."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from conftest import FAST, compose_train, shared_file
from fodl.callbacks import first_layer_filters
from fodl.data.augment import distort, evaluate_view, per_image_standardization
from fodl.data.cifar import CLASSES, CIFAR10DataModule, read_png_tree, read_python
from fodl.errors import FodlError
from fodl.nets import CIFARConvNet, MNISTConvNet
from fodl.train import train


def _images(n, label, rng):
    # class-dependent colour so a net can learn it; uint8 (n, 3, 32, 32)
    base = np.zeros((n, 3, 32, 32)) + np.array([label * 25, 255 - label * 25, (label * 97) % 256])[None, :, None, None]
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_cifar_python(root, per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    def batch(n_per_class):
        ys = np.repeat(np.arange(10), n_per_class)
        x = np.concatenate([_images(n_per_class, c, rng) for c in range(10)])
        p = rng.permutation(len(ys))
        return {b"data": x[p].reshape(len(ys), -1), b"labels": ys[p].tolist(), b"batch_label": b"x"}
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_class)))
    (d / "test_batch").write_bytes(pickle.dumps(batch(per_class)))
    return root


def make_cifar_png(root, per_class=2, as_tar=False, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    top = root / "cifar10" / "cifar10_png"
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            (top / split / name).mkdir(parents=True)
            for i, img in enumerate(_images(per_class, c, rng)):
                Image.fromarray(img.transpose(1, 2, 0)).save(top / split / name / f"{name}_{i}.png")
    if as_tar:
        with tarfile.open(root / "cifar10" / "cifar10_png.tar.gz", "w:gz") as tar:
            tar.add(top, arcname="cifar10_png")
        import shutil
        shutil.rmtree(top)
    return root


@pytest.fixture
def tiny_cifar(tmp_path):
    return make_cifar_python(tmp_path / "data")


def test_python_batches_through_the_real_reader(tiny_cifar):
    raw = read_python(tiny_cifar / "cifar10" / "cifar-10-batches-py")
    assert raw["train_x"].shape == (300, 3, 32, 32) and raw["train_x"].dtype == torch.uint8
    assert raw["test_x"].shape == (60, 3, 32, 32)
    assert torch.bincount(raw["train_y"]).tolist() == [30] * 10


@pytest.mark.parametrize("as_tar", [False, True])
def test_png_tree_dir_and_tarball(tmp_path, as_tar):
    root = make_cifar_png(tmp_path / "d", as_tar=as_tar)
    src = root / "cifar10" / ("cifar10_png.tar.gz" if as_tar else "cifar10_png")
    raw = read_png_tree(src)
    assert raw["train_x"].shape == (20, 3, 32, 32) and raw["test_x"].shape == (20, 3, 32, 32)
    # the folder name decides the label, in the official class order
    cat = raw["train_y"] == CLASSES.index("cat")
    assert cat.sum() == 2
    assert abs(raw["train_x"][cat][:, 0].float().mean().item() - 3 * 25) < 15


def test_datamodule_splits_and_batches(tiny_cifar):
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar), val_size=50, batch_size=16)
    dm.setup()
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [250, 50, 60]
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32)
    tx, _ = dm.transform(x, train=True), None
    ex = dm.transform(x, train=False)
    assert tx.shape == ex.shape == (16, 3, 24, 24) and tx.dtype == torch.float32


def test_corrupt_batch_and_missing_data(tmp_path, tiny_cifar):
    (tiny_cifar / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(FodlError, match="data_batch_3.*corrupt"):
        CIFAR10DataModule(data_dir=str(tiny_cifar)).setup()
    with pytest.raises(FodlError, match="FODL_DATA_DIR"):
        CIFAR10DataModule(data_dir=str(tmp_path / "none"), download=False).setup()


def test_augmentations_shapes_determinism_and_train_vs_eval():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = distort(x, torch.Generator().manual_seed(1))
    b = distort(x, torch.Generator().manual_seed(1))
    c = distort(x, torch.Generator().manual_seed(2))
    assert a.shape == (32, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    e1, e2 = evaluate_view(x), evaluate_view(x)
    assert torch.equal(e1, e2) and not torch.allclose(a, e1)
    # per-image standardization: zero mean, unit std per image
    s = per_image_standardization(torch.rand(4, 3, 24, 24) * 255)
    assert torch.allclose(s.flatten(1).mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(s.flatten(1).std(1, unbiased=False), torch.ones(4), atol=1e-4)
    # the eval view is the exact central crop
    assert torch.allclose(evaluate_view(x), per_image_standardization(x[:, :, 4:28, 4:28].float()))


def test_cnn_shapes_and_filters_grid():
    assert MNISTConvNet()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    for bn in (False, True):
        net = CIFARConvNet(batch_norm=bn)
        assert net(torch.rand(4, 3, 24, 24)).shape == (4, 10)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == bn
    grid = first_layer_filters(CIFARConvNet())
    assert grid.shape[0] == 3 and grid.shape[1] > 24 and 0 <= grid.min() and grid.max() <= 1


@pytest.mark.parametrize("model", ["cifar_cnn", "cifar_cnn_bn"])
def test_fast_dev_run_cifar_models(tmp_path, tiny_cifar, model):
    cfg = compose_train([f"model={model}", f"paths.data_dir={tiny_cifar}", *FAST, "data.val_size=50",
                         "+trainer.fast_dev_run=true", "test=false"], tmp_path / "r")
    assert torch.isfinite(torch.tensor(train(cfg)["train/loss"]))


def test_cifar_cnn_learns_and_logs_filters(tmp_path, tiny_cifar):
    cfg = compose_train(["model=cifar_cnn_bn", f"paths.data_dir={tiny_cifar}", *FAST,
                         "data.val_size=50", "trainer.max_epochs=4", "data.batch_size=25",
                         "data.augment=false"], tmp_path / "r")
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5, metrics  # 10 colour-coded classes; chance is 0.1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard")).Reload()
    assert "filters/first_conv" in acc.Tags()["images"]


@pytest.mark.realdata
def test_real_cifar_png_tarball(tmp_path):
    shared_file("cifar10", "cifar10_png.tar.gz")
    dm = CIFAR10DataModule(data_dir=str(shared_file("cifar10").parent), cache_dir=str(tmp_path),
                           val_size=5000)
    dm.setup()
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [45000, 5000, 10000]
    test_x = dm.splits["test"][0]
    assert torch.bincount(dm.splits["test"][1]).tolist() == [1000] * 10
    means = test_x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4942, 0.4851, 0.4504]), atol=2e-3)


def test_tsne_and_compare_scripts(tmp_path, tiny_cifar):
    import subprocess
    import sys

    from conftest import ROOT
    runs = []
    for model in ("cifar_cnn", "cifar_cnn_bn"):
        cfg = compose_train([f"model={model}", f"paths.data_dir={tiny_cifar}", *FAST, "data.val_size=50",
                             "trainer.max_epochs=2", "trainer.log_every_n_steps=1"], tmp_path / model)
        train(cfg)
        runs.append(tmp_path / model)
    (ckpt,) = (tmp_path / "cifar_cnn_bn" / "checkpoints").glob("epoch*.ckpt")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "tsne.py"), str(ckpt), "--n", "60",
                        "--data-dir", str(tiny_cifar)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cifar_cnn_bn" / "tsne.png").stat().st_size > 5000
    out = tmp_path / "fig" / "bn.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), *map(str, runs),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.with_suffix(".md").read_text()
    assert out.stat().st_size > 5000 and "| cifar_cnn |" in md and "| cifar_cnn_bn |" in md


def test_penultimate_features_shape():
    from fodl.analysis.embedding import penultimate_features
    feats = penultimate_features(CIFARConvNet(), torch.rand(7, 3, 24, 24), batch_size=3)
    assert feats.shape == (7, 192)


def test_validation_sees_the_evaluation_view_during_fit(tmp_path, tiny_cifar):
    """During fit, training batches are distorted and validation batches are the deterministic
    evaluation view (centre crop + standardisation) of the validation images, in order."""
    import lightning as L

    from fodl.data.augment import evaluate_view
    from fodl.train import build

    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.setdefault("train", batch[0][0] if isinstance(batch, list) else batch[0])

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            if trainer.sanity_checking:
                return
            seen.setdefault("val", batch[0])

    cfg = compose_train(["model=cifar_cnn", f"paths.data_dir={tiny_cifar}", *FAST, "data.val_size=50",
                         "data.batch_size=25", "trainer.max_epochs=1", "test=false"], tmp_path / "r")
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(Spy())
    trainer.fit(module, datamodule=datamodule)
    val_x = datamodule.splits["val"][0]
    expected = evaluate_view(val_x[: len(seen["val"])], 24)
    torch.testing.assert_close(seen["val"], expected)
    assert seen["train"].shape[-2:] == (24, 24)
    train_x = datamodule.splits["train"][0]
    views = evaluate_view(train_x, 24)
    # no training image comes through as its evaluation view (it is randomly distorted)
    assert not any(torch.allclose(seen["train"][0], v, atol=1e-4) for v in views)


@pytest.mark.parametrize("recipe, k", [("cifar_cnn_bn", 1), ("cifar_cnn_bn", 3), ("cifar_cnn", 1)])
def test_fast_recipe_runs_its_one_cycle_to_the_end(tmp_path, tiny_cifar, recipe, k):
    """experiment=fast/cifar_cnn_bn and fast/cifar_cnn: the one-cycle schedule's length is
    filled in from the run (optimizer steps, grouped minibatches counted one by one, a short
    last group too), so it ends exactly at the last step (OneCycleLR raises on a step past its
    end; a longer one would stop before its floor)."""
    from fodl.checkpoint import read_checkpoint

    cfg = compose_train([f"experiment=fast/{recipe}", f"paths.data_dir={tiny_cifar}", *FAST,
                         "data.val_size=50", "data.batch_size=10", "trainer.max_epochs=2",
                         f"data.steps_per_execution={k}", "test=false"], tmp_path / "r")
    assert cfg.model.label_smoothing == 0.1 and cfg.model.scheduler_interval == "step" and cfg.model.channels_last
    # the same net as model=<recipe>: only the training recipe differs
    assert cfg.model.net == compose_train([f"model={recipe}"], tmp_path / "m").model.net
    train(cfg)
    ckpt = read_checkpoint(tmp_path / "r" / "checkpoints" / "last.ckpt")
    (sched,) = ckpt["lr_schedulers"]
    steps = 2 * -(-(60 * 5 - 50) // 10)  # tiny_cifar: 300 training images, 50 held out
    # every optimizer step was scheduled: the last one ran at the cycle's floor (index steps-1)
    assert sched["total_steps"] == steps and sched["last_epoch"] == steps
    assert sched["_schedule_phases"][-1]["end_step"] == steps - 1


def test_label_smoothing_changes_only_the_training_loss(tmp_path, tiny_cifar):
    from hydra.utils import instantiate

    def module(eps):
        torch.manual_seed(0)
        return instantiate(compose_train(["model=cifar_cnn_bn", f"model.label_smoothing={eps}"],
                                         tmp_path / "r").model)

    plain, smooth = module(0.0), module(0.1)
    x, y = torch.rand(8, 3, 24, 24), torch.arange(8)
    logits = plain.net.eval()(x)
    smooth.net.eval()
    expected = 0.9 * torch.nn.functional.cross_entropy(logits, y) - 0.1 * logits.log_softmax(-1).mean(-1).mean()
    assert smooth.training_loss((x, y)).item() == pytest.approx(expected.item(), rel=1e-4)
    assert plain.training_loss((x, y)).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    from fodl.schema import check_config  # config values are checked there (one validation story)

    with pytest.raises(FodlError, match="label_smoothing=1.5"):
        check_config(compose_train(["model=cifar_cnn_bn", "model.label_smoothing=1.5"], tmp_path / "r"))


def _sgd_steps(module, x, y, steps=4):
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = module.training_loss((x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_channels_last_trains_like_the_default_layout():
    """model.channels_last=true: same losses and weights as NCHW after a few SGD steps (up
    to float rounding, stated tolerance 1e-4), with both BN and dropout-free nets."""
    import copy

    from fodl.models import ClassifierModule

    torch.manual_seed(0)
    net = CIFARConvNet(batch_norm=True, dropout=0.0)
    x, y = torch.randn(16, 3, 24, 24), torch.randint(0, 10, (16,))
    runs = []
    for cl in (False, True):
        module = ClassifierModule(copy.deepcopy(net), optimizer=None, channels_last=cl)
        losses = _sgd_steps(module, x, y)
        conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        runs.append((losses, module.eval()(x), module.net.state_dict()))
    (l0, out0, sd0), (l1, out1, sd1) = runs
    assert l0[-1] < l0[0]  # it trained
    assert torch.allclose(torch.tensor(l0), torch.tensor(l1), atol=1e-4)
    assert torch.allclose(out0, out1, atol=1e-4)
    assert all(torch.allclose(sd0[k].float(), sd1[k].float(), atol=1e-4) for k in sd0)


def test_channels_last_needs_a_convolution(tmp_path):
    from fodl.models import ClassifierModule

    with pytest.raises(FodlError, match="no 2-d convolution"):
        ClassifierModule(torch.nn.Linear(4, 2), optimizer=None, channels_last=True)
    with pytest.raises(FodlError, match="cuda_graph"):
        ClassifierModule(CIFARConvNet(), optimizer=None, channels_last=True, cuda_graph=True)



def test_compile_trains_like_eager_and_keeps_checkpoint_keys():
    """model.compile=true: same losses, outputs and weights as the eager net after a few SGD
    steps (stated tolerance 1e-4: the compiled kernels may sum in another order), and the same
    state_dict keys, so checkpoints of either load into the other."""
    import copy

    from fodl.models import ClassifierModule

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = CIFARConvNet(batch_norm=True, dropout=0.0)
    x, y = torch.randn(16, 3, 24, 24), torch.randint(0, 10, (16,))
    runs = []
    for compiled in (False, True):
        module = ClassifierModule(copy.deepcopy(net), optimizer=None, channels_last=True,
                                  compile=compiled)
        losses = _sgd_steps(module, x, y)
        with torch.no_grad():
            runs.append((losses, module.eval()(x), module.state_dict()))
    (l0, out0, sd0), (l1, out1, sd1) = runs
    assert l0[-1] < l0[0]  # it trained
    assert torch.allclose(torch.tensor(l0), torch.tensor(l1), atol=1e-4)
    assert torch.allclose(out0, out1, atol=1e-4)
    assert list(sd0) == list(sd1)
    assert all(torch.allclose(sd0[k].float(), sd1[k].float(), atol=1e-4) for k in sd0)


def test_compile_errors_name_the_fix(monkeypatch):
    from fodl.models import ClassifierModule

    with pytest.raises(FodlError, match="cuda_graph"):
        ClassifierModule(CIFARConvNet(), optimizer=None, compile=True, cuda_graph=True)
    # no working C++ compiler for the CPU backend (and no cached build to fall back on)
    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/g++"))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Tanh())
    module = ClassifierModule(net, optimizer=None, num_classes=3, compile=True)  # tanh: a generated kernel
    with pytest.raises(FodlError, match=r"model.compile=true: torch.compile could not build .*"
                                        r"model.compile=false"):
        module.training_loss((torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])))


def test_bf16_mixed_trains_like_fp32(tmp_path, tiny_cifar):
    """trainer.precision=bf16-mixed (CPU autocast; on this project's CPU markedly faster per epoch
    for the CIFAR net, README chapter 5) through the real train() path, channels-last: the
    per-epoch training losses stay within a stated 0.05 of the fp32 run's (bf16 keeps ~3
    significant digits in the forward pass; the weights and optimizer stay fp32; measured
    gap < 0.01 at this rate), and it learns as well."""
    import csv

    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = compose_train(["experiment=fast/cifar_cnn_bn", f"paths.data_dir={tiny_cifar}", *FAST,
                             "data.val_size=50", "trainer.max_epochs=4", "data.batch_size=25",
                             "data.augment=false", "optimizer.lr=0.02", f"trainer.precision={precision}",
                             "logger=csv"],
                            tmp_path / precision)
        metrics = train(cfg)
        rows = list(csv.DictReader(open(next((tmp_path / precision).rglob("metrics.csv")))))
        runs[precision] = ([float(r["train/loss"]) for r in rows if r.get("train/loss")], metrics)
    (l32, m32), (l16, m16) = runs["32-true"], runs["bf16-mixed"]
    assert len(l32) == len(l16) == 4 and l32[-1] < l32[0]
    assert l32 != l16  # bf16 really ran (the losses are not bit-identical)
    assert max(abs(a - b) for a, b in zip(l32, l16)) < 0.05
    assert m16["test/acc"] > 0.5 and abs(m16["test/acc"] - m32["test/acc"]) <= 0.05


@pytest.mark.parametrize("precision, has_bf16, warned", [
    ("bf16-mixed", False, "bf16-mixed"), ("16-mixed", False, "bf16-mixed"),  # (16-mixed runs as bf16 on a CPU)
    ("bf16-mixed", True, None), ("32-true", False, None),
])
def test_bf16_on_a_cpu_without_its_kernels_warns(monkeypatch, caplog, precision, has_bf16, warned):
    import lightning as L

    from fodl import train as train_module

    monkeypatch.setattr(train_module, "_cpu_has_bf16", lambda: has_bf16)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    caplog.clear()  # (the Trainer's own info lines)
    with caplog.at_level("WARNING", logger="fodl.train"):
        train_module._warn_slow_cpu_precision(trainer)
    records = [r for r in caplog.records if r.name == "fodl.train"]
    if warned is None:
        assert not records
    else:
        (record,) = records
        assert f"trainer.precision={warned} on a CPU without native bfloat16" in record.message
        assert "Set trainer.precision=32-true" in record.message

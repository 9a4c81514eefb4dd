"""Chapter 4: optimizer configs, the sweep + plot, interpolation, momentum speed-up."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import FAST, ROOT, compose_train
from fodl.analysis.interpolation import alpha_grid, cost, interpolate
from fodl.config import CONF_DIR
from fodl.nets import MLP
from fodl.train import train

OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def test_all_book_optimizers_exist():
    assert {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"} <= set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", ["none", "step", "cosine"])
def test_each_optimizer_instantiates_and_steps(tmp_path, name, scheduler):
    cfg = compose_train([f"optimizer={name}", f"scheduler={scheduler}"], tmp_path / "r")
    module = instantiate(cfg.model)
    opt_cfg = module.configure_optimizers()
    opt = opt_cfg["optimizer"] if isinstance(opt_cfg, dict) else opt_cfg
    assert (scheduler == "none") == (not isinstance(opt_cfg, dict))
    before = [p.detach().clone() for p in module.parameters()]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    F.cross_entropy(module(x), y).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_book_optimizer_settings(tmp_path):
    def opt(name):
        return instantiate(compose_train([f"optimizer={name}"], tmp_path / "r").optimizer)(
            params=[torch.nn.Parameter(torch.zeros(1))])
    rms = opt("rmsprop").defaults
    assert (rms["lr"], rms["alpha"], rms["eps"]) == (0.001, 0.9, 1e-10)
    assert opt("adam").defaults["betas"] == (0.9, 0.999) and opt("adam").defaults["eps"] == 1e-8
    assert opt("adagrad").defaults["initial_accumulator_value"] == 0.1
    assert opt("momentum").defaults["momentum"] == 0.9 and opt("momentum").defaults["lr"] == 0.01


def test_interpolation_endpoints_are_the_two_nets():
    torch.manual_seed(0)
    trained, initial = MLP(hidden=[32]), MLP(hidden=[32])
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3).add_(0.1)
    x, y = torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,))
    costs = interpolate(trained, initial, x, y, np.array([0.0, 1.0, 0.5]))
    assert costs[0] == pytest.approx(F.cross_entropy(initial(x), y).item(), rel=1e-6)
    assert costs[1] == pytest.approx(F.cross_entropy(trained(x), y).item(), rel=1e-6)
    assert costs[2] != pytest.approx(costs[0]) and costs[2] != pytest.approx(costs[1])


def test_alpha_grid_is_the_books():
    a = alpha_grid()
    assert len(a) == 401 and a[0] == -2 and a[-1] == 2 and 0.0 in a and 1.0 in a


def test_interpolation_script_on_a_trained_checkpoint(tmp_path, tiny_mnist):
    cfg = compose_train([f"paths.data_dir={tiny_mnist}", *FAST, "data.val_size=200",
                         "trainer.max_epochs=2"], tmp_path / "run")
    metrics = train(cfg)
    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import interpolate as script
    finally:
        sys.path.pop(0)
    r = script.run(str(best), tmp_path / "interp", seed=0, step=0.5, data_dir=str(tiny_mnist))
    assert r["cost_trained"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    torch.manual_seed(0)
    fresh = instantiate(cfg.model.net)
    from fodl.data.mnist import MNISTDataModule
    dm = MNISTDataModule(data_dir=str(tiny_mnist), val_size=200)
    dm.setup()
    assert r["cost_random"] == pytest.approx(cost(fresh, *dm.splits["test"]), rel=1e-6)
    assert (tmp_path / "interp" / "interpolation.png").stat().st_size > 1000
    assert len(np.loadtxt(tmp_path / "interp" / "interpolation.csv", delimiter=",", skiprows=1)) == 9
    # as the results pipeline runs it: --ckpt, --seed, --metrics-json (figures beside the JSON)
    out = tmp_path / "row" / "metrics.json"
    argv = ["interpolate.py", "--ckpt", str(best), "--seed", "0", "--step", "0.5",
            "--data-dir", str(tiny_mnist), "--metrics-json", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        assert script.main() == 0
        assert json.loads(out.read_text()) == pytest.approx(
            {"cost_random": r["cost_random"], "cost_trained": r["cost_trained"]}, rel=1e-6)
        assert (tmp_path / "row" / "interpolation.png").is_file()
        mp.setattr(sys, "argv", [*argv, str(best)])  # the checkpoint twice
        assert script.main() == 2


@pytest.mark.slow
def test_sweep_then_plot(tmp_path, tiny_mnist):
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=book/ch4_optimizers",
            f"paths.data_dir={tiny_mnist}", "data.val_size=200", "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1", "data.steps_per_execution=2", "data.batch_size=50",
            "callbacks.progress_bar.style=lines"]  # the five optimizers of the experiment
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "ch4_optimizers").iterdir()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_optimizers.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (sweep / "optimizers.md").read_text()
    assert "| sgd |" in md and "| adam |" in md and "0.9807" in md
    assert (sweep / "optimizers.png").stat().st_size > 5000
    from fodl.analysis.tblogs import read_sweep
    runs = {r.label: r for r in read_sweep(sweep)}
    cost = runs["adam"].scalars["train/loss_step"]
    assert len(cost) >= 10 and cost[-1][1] < cost[0][1]  # logged per step, and decreasing
    # TensorBoard's HPARAMS tab (through TensorBoard itself): 5 trials side by side, one per
    # optimizer, with its settings and test accuracy, as `tensorboard --logdir outputs/` shows
    from tensorboard_api import TensorBoard, hparam_values, metric_values
    groups = TensorBoard(tmp_path / "outputs").session_groups()
    by_opt = {hparam_values(g)["optimizer"]: g for g in groups}
    assert len(groups) == 5 and set(by_opt) == {"sgd", "momentum", "adagrad", "rmsprop", "adam"}
    assert hparam_values(by_opt["momentum"])["optimizer.momentum"] == 0.9
    assert hparam_values(by_opt["adam"])["optimizer.betas"] == "[0.9, 0.999]"
    for opt, g in by_opt.items():
        assert g["sessions"][0]["status"] == "STATUS_SUCCESS"
        assert hparam_values(g)["experiment"] == "book/ch4_optimizers"
        assert metric_values(g)["test/acc"] == pytest.approx(runs[opt].metrics["test/acc"], rel=1e-6)


def test_plot_script_without_sweep_says_how_to_make_one(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_optimizers.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "experiment=book/ch4_optimizers" in r.stderr


def test_momentum_reaches_the_cost_sooner(tiny_mnist, tmp_path, monkeypatch, capsys):
    """scripts/momentum_speedup.py as the results pipeline runs it (--seed, --metrics-json)."""
    import json
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "momentum_speedup.py"), run_name="script")["main"]
    out = tmp_path / "row" / "metrics.json"
    monkeypatch.setattr(sys, "argv", [
        "momentum_speedup.py", "--data-dir", str(tiny_mnist), "--threshold", "0.3", "--window", "10",
        "--max-epochs", "30", "--seed", "0", "--metrics-json", str(out), "data.val_size=200",
        "data.batch_size=20"])
    assert main() == 0
    m = json.loads(out.read_text())
    sgd, mom = m["sgd/minibatches"], m["momentum/minibatches"]
    assert mom < sgd and m["speedup"] == pytest.approx(sgd / mom)
    assert f"| sgd | {int(sgd)} |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["momentum_speedup.py", "--data-dir", str(tmp_path / "none")])
    assert main() == 2 and "Traceback" not in capsys.readouterr().err  # no data: a clear error
    monkeypatch.setattr(sys, "argv", ["momentum_speedup.py", "--data-dir", str(tiny_mnist), "model.net.nope=3"])
    assert main() == 2 and "Could not override 'model.net.nope'" in capsys.readouterr().err


def test_dead_logits_finds_a_killed_class(tmp_path, tiny_mnist):
    cfg = compose_train([f"paths.data_dir={tiny_mnist}", *FAST, "data.val_size=200", "trainer.max_epochs=1",
                         "test=false", "model.net.output_activation=relu"], tmp_path / "sweep" / "0")
    train(cfg)
    ckpt = tmp_path / "sweep" / "0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"]["net.layers.4.bias"][3] = -1e4  # output unit 3 can never fire again
    torch.save(state, ckpt)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "dead_logits.py"), str(tmp_path / "sweep"),
                        "--data-dir", str(tiny_mnist)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 1 [3] |" in r.stdout and "1 of 1 runs lost a class" in r.stdout

"""The framework-overhead cuts keep Lightning's behaviour (speed itself is measured by
scripts/benchmark.py, not here)."""

from types import SimpleNamespace

import lightning as L
import torch

from fodl.callbacks import RichProgressBar
from fodl.models.base import FodlModule


def test_progress_bar_redraws_at_most_redraws_per_second_and_on_the_last_batch(monkeypatch):
    drawn = []
    monkeypatch.setattr(L.pytorch.callbacks.RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, out, batch, i: drawn.append(i))
    bar = RichProgressBar(redraws_per_second=1)  # at most one redraw a second
    trainer = SimpleNamespace(num_training_batches=50)
    for i in range(50):  # 50 batches in well under a second
        bar.on_train_batch_end(trainer, None, None, None, i)
    assert drawn == [0, 49]
    bar._next_draw = 0.0  # the interval has passed: the next batch redraws
    bar.on_train_batch_end(trainer, None, None, None, 5)
    assert drawn == [0, 49, 5]


def test_fodl_module_writes_hook_names_plainly_and_still_registers_parameters():
    m = FodlModule()
    m._current_fx_name = "training_step"
    assert m.__dict__["_current_fx_name"] == "training_step"
    assert "_current_fx_name" not in m._modules and "_current_fx_name" not in m._parameters
    m.layer = torch.nn.Linear(2, 3)        # everything else still goes through nn.Module
    m.scale = torch.nn.Parameter(torch.ones(1))
    assert "layer" in m._modules and "scale" in m._parameters
    assert len(list(m.parameters())) == 3

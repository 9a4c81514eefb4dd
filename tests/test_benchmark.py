"""The benchmark's code path (no speed assertions here; see also test_hardening)."""

from fodl.benchmark import time_to_accuracy


def test_time_to_accuracy_stops_at_the_target(tiny_mnist):
    r = time_to_accuracy(["model=logreg", "data.val_size=200", "trainer.max_epochs=20",
                          "callbacks.progress_bar.style=lines"], str(tiny_mnist), target=0.9)
    assert r["val_acc"] >= 0.9 and r["epochs"] < 20 and r["fit_s"] > 0

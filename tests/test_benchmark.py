"""The benchmark's code path runs and measures both loops (no speed assertions here)."""

from fodl.benchmark import compare, time_to_accuracy


def test_compare_runs_both_loops(tiny_mnist):
    r = compare("mnist_mlp", str(tiny_mnist), epochs=3,
                extra=["data.val_size=200", "callbacks.progress_bar.refresh_rate=0"])
    assert r["plain_s"] > 0 and r["fodl_s"] > 0 and r["ratio"] > 0 and r["steps"] == 10


def test_time_to_accuracy_stops_at_the_target(tiny_mnist):
    r = time_to_accuracy(["model=logreg", "data.val_size=200", "trainer.max_epochs=20",
                          "callbacks.progress_bar.refresh_rate=0"], str(tiny_mnist), target=0.9)
    assert r["val_acc"] >= 0.9 and r["epochs"] < 20 and r["fit_s"] > 0

"""Results you can regenerate: the experiment registry (``conf/reproduce.yaml``), the runner
that makes its runs (``scripts/reproduce.py``) and the report written from them
(``docs/results.md``, the chapter pages' tables, the README's headline table), and the run
ledger (``results/runs/``: one committed record per finished run, :mod:`fodl.results.ledger`).

Layering: this package sits on top, beside :mod:`fodl.analysis`. It starts training runs as
subprocesses of ``scripts/train.py`` and reads what they leave on disk (``metrics.json`` and
its own ``reproduce.json``) or the ledger; it imports nothing of :mod:`fodl.models` or :mod:`fodl.nets`.
"""

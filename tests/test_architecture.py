"""The house's rules hold: the layer contracts of pyproject.toml ([tool.importlinter], see
docs/architecture.md), checked by import-linter on the source as it stands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("importlinter")

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"]


def _lint(src) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([*LINT, str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold():
    r = _lint(ROOT / "src")
    assert r.returncode == 0, f"an import breaks fodl's layers:\n{r.stdout}\n{r.stderr}"
    assert "broken" in r.stdout and " 0 broken" in r.stdout


def test_a_crossing_import_breaks_them(tmp_path):
    """A data module importing a model (and a cycle inside the text toolkit) fail the check."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "fodl", src / "fodl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "fodl" / "data" / "idx.py", "a") as f:
        f.write("\nfrom fodl.models.base import FodlModule  # noqa\n")
    with open(src / "fodl" / "text" / "pad.py", "a") as f:
        f.write("\nfrom fodl.text.vocab import Vocabulary  # noqa\n")
    r = _lint(src)
    assert r.returncode != 0
    assert "fodl.data.idx -> fodl.models.base" in r.stdout
    assert "No cycles are allowed in fodl.text" in r.stdout

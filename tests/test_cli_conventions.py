"""Everyday conventions: `--help` lists what there is, and scripts find data only where the user
says (paths.data_dir / FODL_DATA_DIR)."""

from conftest import ROOT, run_script
from fodl.catalog import description, options
from fodl.config import CONF_DIR, default_data_dir


def test_help_lists_models_experiments_and_groups_one_line_each(tmp_path):
    r = run_script("train.py", ["--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()

    def line_of(name):
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        return line

    for group in ("model", "experiment"):
        names = options(group)
        assert names
        for name in names:
            words = description(CONF_DIR / group / f"{name}.yaml").split()
            assert " ".join(words[:4]) in line_of(name), name  # its one-line description
    assert "mnist_mlp" in options("model") and "book/ch4_optimizers" in options("experiment")
    assert "Chapter 3: logistic regression" in line_of("logreg")
    for group in ("optimizer", "scheduler", "trainer", "logger", "callbacks", "debug", "data"):
        line = line_of(group)
        assert all(o in line for o in options(group)), group
    assert "sgd (default)" in line_of("optimizer") and "null (default: off)" in line_of("debug")
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "outputs").exists()


def test_eval_help(tmp_path):
    r = run_script("eval.py", ["--help"], tmp_path)
    assert r.returncode == 0 and "ckpt_path=" in r.stdout and "split=test|val" in r.stdout


def test_description_is_the_first_sentence_of_the_leading_comment(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("# @package _global_\n# Chapter 9: deep Q-learning (Mnih et al. 2015): replay,\n"
                 "# epsilon-\n# greedy. More text.\n# more\nkey: 1  # not this\n")
    assert description(f) == "Chapter 9: deep Q-learning (Mnih et al. 2015): replay, epsilon-greedy."
    f.write_text("key: 1\n")
    assert description(f) == ""


def test_scripts_find_data_only_where_the_user_says(tmp_path, monkeypatch):
    """No guessing of a folder beside the checkout: FODL_DATA_DIR, else data/ under the run root
    (the current directory), exactly as paths.data_dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FODL_ROOT", raising=False)
    assert default_data_dir() == "./data"
    monkeypatch.setenv("FODL_ROOT", str(tmp_path / "root"))
    assert default_data_dir() == str(tmp_path / "root" / "data")
    monkeypatch.setenv("FODL_DATA_DIR", str(tmp_path / "mine"))
    assert default_data_dir() == str(tmp_path / "mine")


def test_every_script_reports_user_errors_the_same_way():
    """Scripts end a FodlError with `error: <paragraph>` on stderr and status 2, through one
    decorator rather than a try/except copy each."""
    from fodl.errors import FodlError, reports_errors

    @reports_errors
    def main(fail: bool) -> int:
        if fail:
            raise FodlError("data.path=x does not exist: give the folder of the files.")
        return 0

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(False) == 0 and main(True) == 2
    assert err.getvalue() == "error: data.path=x does not exist: give the folder of the files.\n"
    copies = [p.name for p in (ROOT / "scripts").glob("*.py") if "except FodlError" in p.read_text()]
    assert copies == [], f"use @reports_errors instead of a try/except in {copies}"

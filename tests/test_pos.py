"""Chapter 7 POS tagger: CoNLL readers (2- and 3-column, gz, malformed lines), sentence-bounded
windows, the net, training through train(), vocabularies in the checkpoint, scripts/tag.py,
pretrained word2vec vectors, the NLTK anchor, and the real CoNLL-2000 files."""

import gzip
import io
import logging
import random
import runpy
import sys

import pytest
import torch

from conftest import FAST, ROOT, compose_train, run_script, shared_file, write_word2vec
from fodl.checkpoint import read_checkpoint
from fodl.data.conll import CoNLLDataModule, read_conll
from fodl.errors import FodlError
from fodl.models.tagger import TaggerModule, load_tagger
from fodl.nets.tagger import WindowTaggerNet
from fodl.text.window import SHAPES, WindowFeaturizer, word_shape
from fodl.train import train

# a tiny language whose tags depend on the word and, for "run"/"walks", on the word before it
LEXICON = {"DT": ["the", "a", "every"], "JJ": ["big", "small", "red", "happy"],
           "NN": ["dog", "cat", "bank", "umbrella", "woman"], "VBZ": ["sees", "likes", "walks"],
           "PRP": ["she", "he"], "MD": ["will", "can"], "VB": ["run", "see", "walk"], ".": ["."]}
PATTERNS = [["DT", "JJ", "NN", "VBZ", "DT", "NN", "."], ["PRP", "MD", "VB", "."],
            ["DT", "NN", "MD", "VB", "DT", "JJ", "NN", "."], ["PRP", "VBZ", "DT", "NN", "."],
            ["DT", "NN", "NN", "VBZ", "."]]


def make_sentences(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tags = rng.choice(PATTERNS)
        words = [rng.choice(LEXICON[t]) for t in tags]
        if tags[1] == "NN" and tags[2] == "NN":
            words[2] = "run"  # "run" as a noun after a noun: the context decides its tag
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        out.append((words, tags))
    return out


def write_conll(path, sentences, chunks=False, gz=False):
    lines = []
    for words, tags in sentences:
        lines += [f"{w} {t}" + (" B-NP" if chunks else "") for w, t in zip(words, tags)] + [""]
    data = "\n".join(lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def held_out_sentences(n):
    """Test sentences: the same language, and an unknown noun ("giraffe") in every fourth."""
    out = make_sentences(n, 1)
    for words, tags in out[::4]:
        if "NN" in tags:
            words[tags.index("NN")] = "giraffe"
    return out


def tiny_conll(root, layout="pos", n_train=300, n_test=60):
    if layout == "pos":
        write_conll(root / "conll2000_pos" / "pos.train.txt", make_sentences(n_train, 0))
        write_conll(root / "conll2000_pos" / "pos.test.txt", held_out_sentences(n_test))
    else:
        write_conll(root / "conll2000" / "train.txt.gz", make_sentences(n_train, 0), True, True)
        write_conll(root / "conll2000" / "test.txt.gz", held_out_sentences(n_test), True, True)
    return root


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets on a shared 2-core machine: one intra-op thread (two threads spin-wait for
    each other under load, 10-20x slower); restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


NUM_TAGS = len(LEXICON) + 1  # NN, ..., and run's NN use: the tags of the tiny language
SMALL = ["model=pos_tagger", "model.net.embedding_dim=16", "model.net.hidden=[32,16]",
         "model.net.suffix_dim=4", "model.net.shape_dim=4", f"model.num_classes={len(LEXICON)}",
         "data.val_size=30", "data.max_words=100", "data.max_suffixes=200", "data.batch_size=32",
         "data.steps_per_execution=1", "optimizer.lr=0.01"]


# -- readers -------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks,gz", [(False, False), (True, False), (True, True)])
def test_read_conll_two_and_three_columns(tmp_path, chunks, gz):
    sents = make_sentences(5, 0)
    p = write_conll(tmp_path / ("f.txt.gz" if gz else "f.txt"), sents, chunks, gz)
    got = read_conll(p)
    assert [(s.words, s.tags) for s in got] == sents


def test_malformed_lines_name_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("The DT\nwoman NN\n\nwent\nto TO\n")
    with pytest.raises(FodlError, match=r"bad.txt, line 4: 'went' has 1 column"):
        read_conll(p)
    p.write_text("The DT B-NP\nwoman NN\n")
    with pytest.raises(FodlError, match=r"bad.txt, line 2: 'woman NN' has 2 column\(s\) where the lines before have 3"):
        read_conll(p)
    p.write_bytes(b"The DT\nw\xffman NN\n")
    with pytest.raises(FodlError, match=r"bad.txt, line 2 .*not valid utf-8"):
        read_conll(p)
    p.write_bytes(b"\n\n")
    with pytest.raises(FodlError, match="no sentences"):
        read_conll(p)
    (tmp_path / "b.gz").write_bytes(b"not gzip")
    with pytest.raises(FodlError, match="not a readable gzip"):
        read_conll(tmp_path / "b.gz")


def test_datamodule_layouts_and_wrong_columns(tmp_path):
    pos = CoNLLDataModule(tiny_conll(tmp_path / "a"), val_size=30)
    off = CoNLLDataModule(tiny_conll(tmp_path / "b", "official"), layout="official", download=False)
    off.val_size = 30
    a, b = pos.sentences(), off.sentences()
    assert a == b and len(a["train"]) == 270 and len(a["val"]) == 30 and len(a["test"]) == 60
    # the 3-column file where the book's 2-column copy is expected: a clear error
    write_conll(tmp_path / "c" / "conll2000_pos" / "pos.train.txt", make_sentences(3, 0), chunks=True)
    write_conll(tmp_path / "c" / "conll2000_pos" / "pos.test.txt", make_sentences(3, 0))
    with pytest.raises(FodlError, match=r"pos.train.txt, line 1: .* has 3 column\(s\); a CoNLL-2000 file has 2"):
        CoNLLDataModule(tmp_path / "c").sentences()
    with pytest.raises(FodlError, match="conll2000_pos"):
        CoNLLDataModule(tmp_path / "missing").sentences()


def test_official_files_are_downloaded_with_their_md5(tmp_path, monkeypatch):
    calls = []

    def fake_download(urls, dest, md5=None, timeout=60):
        calls.append((urls[0], md5))
        write_conll(dest, make_sentences(40, len(calls)), chunks=True, gz=True)
        return dest

    monkeypatch.setattr("fodl.data.conll.download", fake_download)
    dm = CoNLLDataModule(tmp_path, layout="official", val_size=5)
    assert len(dm.sentences()["test"]) == 40
    assert calls == [("https://www.clips.uantwerpen.be/conll2000/chunking/train.txt.gz", "6969c2903a1f19a83569db643e43dcc8"),
                     ("https://www.clips.uantwerpen.be/conll2000/chunking/test.txt.gz", "a916e1c2d83eb3004b38fc6fcd628939")]
    with pytest.raises(FodlError, match="download=false"):
        CoNLLDataModule(tmp_path / "none", layout="official", download=False).files()
    with pytest.raises(FodlError, match="md5 of its text"):
        CoNLLDataModule(tmp_path, layout="official", verify="md5", val_size=5).sentences()


# -- windows -------------------------------------------------------------------------------
def test_windows_are_padded_at_sentence_edges_never_crossing_sentences():
    sents = [["The", "dog", "runs"], ["Cats", "sleep"]]
    f = WindowFeaturizer.build(sents, left=2, right=1, suffix_lengths=(2,))
    x = f.windows(sents)
    assert x.shape == (5, 4, 3)
    bos, eos = f._bos_row, f._eos_row
    word = {w: f.words[f.key(w)] for s in sents for w in s}
    # "The": two <bos> before it, "dog" after
    assert x[0, 0].tolist() == bos and x[0, 1].tolist() == bos
    assert x[0, 2, 0] == word["The"] and x[0, 3, 0] == word["dog"]
    # "runs", the last word of sentence 1: the word after it is <eos>, not "Cats"
    assert x[2, 3].tolist() == eos and x[2, 0, 0] == word["The"] and x[2, 1, 0] == word["dog"]
    # "Cats", the first word of sentence 2: <bos> before it, not "dog"/"runs"
    assert x[3, 0].tolist() == bos and x[3, 1].tolist() == bos and x[3, 3, 0] == word["sleep"]
    assert x[4, 3].tolist() == eos
    # the book's window: the word and the two before it
    book = WindowFeaturizer.build(sents, left=2, right=0, suffix_lengths=())
    xb = book.windows(sents)
    assert xb.shape == (5, 3, 2) and xb[4, 1, 0] == book.words[book.key("Cats")]


def test_features_shapes_suffixes_and_unknown_words():
    f = WindowFeaturizer.build([["Running", "dogs", "in", "1987"], ["dogs"]], left=0, right=0,
                               suffix_lengths=(1, 3), min_count=2)
    rows = f.token_rows(["Running", "dogs", "2001", "Zebras"])
    assert [SHAPES[r[1]] for r in rows] == ["Title", "lower", "number", "Title"]
    assert rows[0][0] == f.words.unk_id and rows[1][0] == f.words["dogs"]  # seen once -> <unk>
    assert f.suffixes.decode([rows[0][3]]) == ["3:ing"]  # an unknown word keeps its suffix
    assert f.key("1987") == f.key("2001") == "0000"
    assert rows[3][2] == f.suffixes["1:s"] and rows[3][3] == f.suffixes.unk_id
    assert [word_shape(w) for w in ["U.S.", "McDonald", ",", "3.5", "A4"]] == [
        "UPPER", "mixed", "punct", "number", "has_digit"]


# -- the net -------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["book", "modern"])
def test_net_shapes_and_book_layers(style):
    net = WindowTaggerNet(50, 8, left=2, right=0, num_tags=5, hidden=[16, 12],
                          suffix_lengths=[] if style == "book" else [1, 2], suffix_vocab_size=20,
                          suffix_dim=0 if style == "book" else 3, shape_dim=0 if style == "book" else 2,
                          style=style)
    x = torch.zeros(4, 3, 4, dtype=torch.long)
    assert net(x).shape == (4, 5)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    per_word = 8 if style == "book" else 8 + 2 + 2 * 3
    assert [(m.in_features, m.out_features) for m in linears] == [(3 * per_word, 16), (16, 12), (12, 5)]
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bn) == (3 if style == "book" else 2)  # the book: sigmoid(BN) on the logits too


def test_word_dropout_only_in_training_and_never_on_specials():
    net = WindowTaggerNet(50, 4, left=0, right=0, num_tags=3, hidden=[4], word_dropout=1.0)
    seen = []
    net.embed.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    x = torch.tensor([[[2, 0]], [[10, 0]], [[30, 0]]])
    net.train()
    net(x)
    net.eval()
    net(x)
    assert seen[0].flatten().tolist() == [2, 1, 1] and seen[1].flatten().tolist() == [2, 10, 30]


# -- training, checkpoint, CLI ----------------------------------------------------------------
def test_fast_dev_run(tmp_path):
    cfg = compose_train([f"paths.data_dir={tiny_conll(tmp_path / 'data')}", *FAST, *SMALL,
                         "+trainer.fast_dev_run=true"], tmp_path / "run")
    metrics = train(cfg)
    assert "train/loss" in metrics and "test/acc" in metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tagger trained on the tiny language (3 epochs, a few seconds) and its run dir."""
    tmp = tmp_path_factory.mktemp("pos")
    data = tiny_conll(tmp / "data")
    cfg = compose_train([f"paths.data_dir={data}", *FAST, *SMALL, "trainer.max_epochs=4"], tmp / "run")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    fodl_log = logging.getLogger("fodl")
    fodl_log.addHandler(handler)
    level = fodl_log.level
    fodl_log.setLevel(logging.INFO)
    try:
        metrics = train(cfg)
    finally:
        fodl_log.removeHandler(handler)
        fodl_log.setLevel(level)
    ckpt = sorted((tmp / "run" / "checkpoints").glob("epoch*.ckpt"))[0]
    return metrics, ckpt, data, logs.getvalue()


def test_tagger_learns_and_logs_unknown_word_accuracy(trained):
    metrics, _, _, log = trained
    assert metrics["test/acc"] > 0.95 and metrics["val/acc"] > 0.95
    assert 0.5 < metrics["test/acc_unknown"] <= 1.0  # "giraffe" is tagged from its context
    for epoch in range(4):  # the book's sentence after every epoch
        assert f"epoch {epoch}: The/DT woman/NN ,/" in log
    assert "| tag | accuracy | tokens |" in log and "| NN | " in log  # per-tag accuracy


def test_vocabularies_round_trip_through_the_checkpoint(trained):
    _, ckpt, data, _ = trained
    raw = read_checkpoint(ckpt)  # torch.load(weights_only=True)
    assert raw["fodl_text"]["settings"]["left"] == 1
    tagger = load_tagger(str(ckpt))
    dm = CoNLLDataModule(data, val_size=30, max_words=100, max_suffixes=200)
    dm.setup("test")
    assert tagger.featurizer.words.words == dm.featurizer.words.words
    assert tagger.featurizer.suffixes.words == dm.featurizer.suffixes.words
    assert tagger.tags.words == dm.tags.words
    x, y, _ = dm.splits["test"]
    with torch.no_grad():
        acc = (tagger.net(x).argmax(-1) == y).float().mean()
    assert acc > 0.95
    assert [t for _, t in tagger.tag_text("The big dog will run.")] == ["DT", "JJ", "NN", "MD", "VB", "."]


def test_tag_cli(trained, tmp_path, monkeypatch, capsys):
    _, ckpt, _, _ = trained
    r = run_script("tag.py", [str(ckpt), "She will walk.", "the dog sees a cat ."], cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "She/PRP will/MD walk/VB ./."
    assert lines[1].split() == ["the/DT", "dog/NN", "sees/VBZ", "a/DT", "cat/NN", "./."]

    # errors: one line, no trace (in-process: a second interpreter start costs ~30 s here)
    tag = runpy.run_path(str(ROOT / "scripts" / "tag.py"))
    monkeypatch.setattr(sys, "argv", ["tag.py", str(tmp_path / "nope.ckpt"), "x"])
    assert tag["main"]() == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["tag.py", str(trained[1]), ""])
    assert tag["main"]() == 0 and capsys.readouterr().out == "\n"  # nothing to tag


def test_pretrained_word2vec_initialises_the_embedding(tmp_path):
    data = tiny_conll(tmp_path / "data")
    words = ["the", "dog", "zebra", "Bank"]  # zebra: not in training, fills the vocabulary
    vec = torch.randn(4, 16)
    write_word2vec(data / "vectors.bin", words, vec, binary=True)
    cfg = compose_train([f"paths.data_dir={data}", *FAST, *SMALL, "data.vectors=vectors.bin",
                         "+trainer.fast_dev_run=true"], tmp_path / "run")
    from hydra.utils import instantiate

    dm, module = instantiate(cfg.data), instantiate(cfg.model)
    dm.setup("fit")

    class T:  # what Lightning gives setup(): a trainer with the datamodule
        datamodule = dm

    module._trainer = T()
    module.setup("fit")
    fw = dm.featurizer.words
    assert "zebra" in fw and fw["zebra"] >= fw.num_specials
    emb = module.net.embed.weight
    for i, w in enumerate(words):
        assert torch.allclose(emb[fw[w.lower()]], vec[i]), w
    assert not torch.allclose(emb[fw["cat"]], torch.zeros(16))  # others keep their random init


def test_a_skipgram_checkpoint_loads_as_vectors(tmp_path):
    wv = pytest.importorskip("fodl.analysis.word_vectors")
    from fodl.text.state import store_text_state
    from fodl.text.vocab import UNK, Vocabulary

    data = tiny_conll(tmp_path / "data")
    vocab = Vocabulary.build(["the"] * 3 + ["dog"] * 2 + ["zebra"], specials=(UNK,), unk=UNK)
    emb = torch.randn(5, 16)  # more rows than words, as a skip-gram net has
    ckpt = {"state_dict": {wv.EMBEDDING_KEY: emb}}
    store_text_state(ckpt, {"words": vocab})
    torch.save(ckpt, data / "skipgram.ckpt")
    dm = CoNLLDataModule(data, val_size=30, max_words=100, max_suffixes=200, vectors="skipgram.ckpt")
    assert dm.read_vectors()[0] == ["the", "dog", "zebra"]
    dm.setup("fit")
    rows, found = dm.pretrained
    fw = dm.featurizer.words
    assert "zebra" in fw and int(found.sum()) == 3
    assert torch.equal(rows[fw["dog"]], emb[vocab["dog"]]) and torch.equal(rows[fw["zebra"]], emb[3])


def test_vocabulary_larger_than_the_net_is_a_clear_error(tmp_path):
    cfg = compose_train([f"paths.data_dir={tiny_conll(tmp_path / 'data')}", *FAST, *SMALL,
                         "model.net.vocab_size=5", "+trainer.fast_dev_run=true"], tmp_path / "run")
    with pytest.raises(FodlError, match="rows"):
        train(cfg)


def test_nltk_anchor_on_the_tiny_language(tmp_path):
    pytest.importorskip("nltk")
    from fodl.analysis.tagging import nltk_perceptron

    r = nltk_perceptron(make_sentences(200, 0), make_sentences(50, 1), iterations=3)
    assert r["acc"] > 0.9 and r["tokens"] == sum(len(w) for w, _ in make_sentences(50, 1))
    assert set(r["per_tag"]) <= set(LEXICON)


def test_module_is_a_classifier():
    assert issubclass(TaggerModule, __import__("fodl.models.classifier", fromlist=["x"]).ClassifierModule)


# -- the real files ------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_conll2000_both_layouts_agree():
    two = shared_file("conll2000_pos", "pos.train.txt").parent
    three = shared_file("conll2000", "train.txt.gz").parent
    for split, n_sent, n_tok in (("train", 8936, 211727), ("test", 2012, 47377)):
        a = read_conll(two / f"pos.{split}.txt")
        b = read_conll(three / f"{split}.txt.gz")
        assert len(a) == len(b) == n_sent and sum(len(s.words) for s in a) == n_tok
        assert a == b
    tags = {t for s in read_conll(two / "pos.train.txt") for t in s.tags}
    assert len(tags) == 44


# -- experiments and the benchmark -----------------------------------------------------------
@pytest.mark.parametrize("experiment", ["book/ch7_pos_tagger", "fast/pos_tagger"])
def test_experiments_run(tmp_path, experiment):
    small = [o for o in SMALL if not o.startswith(("data.val_size", "data.batch_size"))]
    cfg = compose_train([f"paths.data_dir={tiny_conll(tmp_path / 'data')}", *FAST, *small,
                         f"experiment={experiment}", "model.net.embedding_dim=16",
                         "model.net.hidden=[32,16]", "+trainer.fast_dev_run=true",
                         *([] if experiment.startswith("book") else ["data.val_size=30"])], tmp_path / "run")
    metrics = train(cfg)
    assert "test/acc" in metrics
    if experiment.startswith("book"):
        assert cfg.model.net.style == "book" and cfg.data.left == 2 and cfg.data.right == 0
        assert cfg.data.suffix_lengths == [] and cfg.data.val_size == 0


def test_benchmark_compare_counts_tokens(tmp_path):
    from fodl.benchmark import compare

    data = tiny_conll(tmp_path / "data")
    extra = [o for o in SMALL if not o.startswith("model=")] + [
        "trainer.enable_model_summary=false", "+trainer.limit_train_batches=4", "logger=none", "callbacks=none"]
    r = compare("pos_tagger", str(data), epochs=2, extra=extra)
    assert r["steps"] == 4 and r["tokens"] == 4 * 32  # one tagged token per example
    assert r["plain_s"] > 0 and r["fodl_s"] > 0 and r["plain_loss_last"] < r["plain_loss_first"] * 1.5

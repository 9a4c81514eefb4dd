"""Skip-gram (book chapter 6): pair generation, losses, analogy evaluation, training, scripts."""

import importlib.util
import random
from collections import Counter

import pytest
import torch

from conftest import FAST, ROOT, SHARED_DATA, compose_train, shared_file, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.data.corpus import CorpusDataModule, block_pairs, block_positive_mask, keep_probabilities
from fodl.errors import FodlError
from fodl.metrics.analogy import (
    AnalogyQuestions,
    encode_analogies,
    evaluate_analogies,
    nearest_neighbours,
    read_analogies,
)
from fodl.models.skipgram import SkipGramModule, _check_sparse_optimizer
from fodl.nets.skipgram import SkipGramNet
from fodl.train import train


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny ops run faster on one thread; on a busy 2-core machine, two OpenMP threads
    spin-waiting on each other made a test of a few hundred steps take a minute."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _dm(tmp_path, text: str, **kw) -> CorpusDataModule:
    (tmp_path / "corpus.txt").write_text(text)
    opts = dict(corpus=str(tmp_path / "corpus.txt"), cache_dir=None, min_count=1, max_size=None,
                subsample=0.0, analogies=None, download=False)
    dm = CorpusDataModule(**{**opts, **kw})
    dm.setup("fit")
    return dm


def _epoch_pairs(dm: CorpusDataModule, epoch: int = 0) -> Counter:
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    pairs = Counter()
    batches = list(loader)
    assert len(batches) == loader.num_batches() == len(loader)
    for b in batches:
        for c, x in block_pairs(b).tolist():
            pairs[dm.vocab.words[c], dm.vocab.words[x]] += 1
    return pairs


def _window_pairs(docs: list[list[str]], window: int) -> Counter:
    """The reference: every (center, context) with 1 <= |i - j| <= window inside a document."""
    out = Counter()
    for d in docs:
        for i in range(len(d)):
            for j in range(max(0, i - window), min(len(d), i + window + 1)):
                if j != i:
                    out[d[i], d[j]] += 1
    return out


# -- pair generation ---------------------------------------------------------------------

DOCS = ["a b c d e f g", "h i j", "k"]  # every word once: a pair names its positions


@pytest.mark.parametrize("block_size, batch_size", [(2, 8), (3, 40), (16, 400)])
def test_full_window_pairs_are_exact_once_per_epoch(tmp_path, block_size, batch_size):
    dm = _dm(tmp_path, "\n".join(DOCS) + "\n", window=2, reduced_window=False,
             block_size=block_size, batch_size=batch_size)
    expected = _window_pairs([d.split() for d in DOCS], 2)
    assert _epoch_pairs(dm) == expected and _epoch_pairs(dm, epoch=3) == expected
    assert sum(expected.values()) == (2 + 3 + 4 + 4 + 4 + 3 + 2) + 6


def test_pairs_cross_documents_only_when_asked(tmp_path):
    dm = _dm(tmp_path, "\n".join(DOCS) + "\n", window=2, reduced_window=False, block_size=4,
             batch_size=16, respect_documents=False)
    assert _epoch_pairs(dm) == _window_pairs([" ".join(DOCS).split()], 2)


def test_num_skips_draws_distinct_contexts_in_the_window(tmp_path):
    docs = ["a b c d e f g h i j", "k l m"]
    full = _window_pairs([d.split() for d in docs], 2)
    dm = _dm(tmp_path, "\n".join(docs), window=2, num_skips=4, block_size=4, batch_size=16)
    assert _epoch_pairs(dm) == full  # 4 of the 4 positions: every pair
    dm = _dm(tmp_path, "\n".join(docs), window=2, num_skips=2, block_size=4, batch_size=8)
    for epoch in range(3):
        pairs = _epoch_pairs(dm, epoch)
        assert set(pairs) <= set(full) and max(pairs.values()) == 1  # distinct, in the window
        per_center = Counter(c for c, _ in pairs.elements())
        # two contexts per center (k..m has only two neighbours each within the document)
        assert all(per_center[w] == 2 for w in "abcdefghijklm")


def test_dynamic_window_keeps_near_pairs_more_often(tmp_path):
    text = " ".join(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(300))
    dm = _dm(tmp_path, text, window=3, block_size=8, batch_size=64)
    full = _window_pairs([text.split()], 3)
    seen = Counter()
    for epoch in range(4):
        pairs = _epoch_pairs(dm, epoch)
        assert set(pairs) <= set(full)
        pos = {w: i for i, w in enumerate(text.split())}
        seen.update(abs(pos[c] - pos[x]) for c, x in pairs.elements())
    # w_i ~ U{1,2,3}: distance d is kept with probability (4 - d) / 3
    assert seen[1] > seen[2] > seen[3] > 0
    assert abs(seen[3] / seen[1] - 1 / 3) < 0.1


def test_block_mask_respects_padding_and_documents():
    docs = torch.tensor([[-1, 0, 0, 1, 1, -1]])  # window 1, block of 4 centers
    mask = block_positive_mask(docs, block=4, window=1, reduced_window=False)
    # centers at positions 1..4: (1,2) same doc; 2 pairs 1; 3 pairs 4; 4 pairs 3; never padding
    assert mask[0].nonzero().tolist() == [[0, 2], [1, 1], [2, 4], [3, 3]]


def test_subsampling_keeps_rare_words_and_thins_frequent_ones(tmp_path):
    keep = keep_probabilities(torch.tensor([900, 90, 9, 1]), 1e-2)
    assert keep[-1] == 1.0 and keep[0] < keep[1] < 1.0
    f = 0.9  # word2vec's rule for the most frequent word
    assert keep[0].item() == pytest.approx(((f / 1e-2) ** 0.5 + 1) * 1e-2 / f, rel=1e-5)
    words = ["the"] * 500 + [f"r{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(100)]
    random.Random(0).shuffle(words)
    dm = _dm(tmp_path, " ".join(words), window=2, subsample=1e-3, block_size=8, batch_size=48)
    loader = dm.train_dataloader()
    n = [sum(1 for _ in loader) for loader.epoch in range(3)]
    assert n[0] == n[1] == n[2] == loader.num_batches()  # every epoch the same number of steps
    pairs = _epoch_pairs(dm)
    assert sum(v for (c, _), v in pairs.items() if c == "the") < 500  # "the" thinned out


def test_loader_is_deterministic_per_seed_and_epoch(tmp_path):
    text = " ".join(f"x{chr(97 + i % 20)}" for i in range(400))
    a = _dm(tmp_path, text, seed=1, subsample=1e-2, block_size=4, batch_size=24).train_dataloader()
    b = _dm(tmp_path, text, seed=1, subsample=1e-2, block_size=4, batch_size=24).train_dataloader()
    first = [x.words for x in a][0]
    assert torch.equal(first, [x.words for x in b][0])
    a.set_epoch(1)
    assert not torch.equal(first, [x.words for x in a][0])


# -- losses ------------------------------------------------------------------------------


def _topic_corpus(n_docs=300, seed=0) -> str:
    """Five topics of eight words; each document draws from one topic: co-occurrence = topic."""
    rng = random.Random(seed)
    topics = [[f"t{chr(97 + t)}w{chr(97 + i)}" for i in range(8)] for t in range(5)]
    docs = []
    for _ in range(n_docs):
        topic = topics[rng.randrange(5)]
        docs.append(" ".join(rng.choice(topic) for _ in range(20)))
    return "\n".join(docs)


@pytest.mark.parametrize("loss, init, lr", [("nce", "book", 0.5), ("negative_sampling", "word2vec", 0.5)])
def test_losses_decrease_and_learn_topics(tmp_path, loss, init, lr):
    torch.manual_seed(0)
    dm = _dm(tmp_path, _topic_corpus(), window=3, block_size=8, batch_size=256, noise_samples=16)
    net = SkipGramNet(len(dm.vocab), 16, init=init)
    module = SkipGramModule(net, optimizer=None, loss=loss, reduction="mean")
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    loader = dm.train_dataloader()
    for epoch in range(6):
        loader.set_epoch(epoch)
        for batch in loader:
            loss_value = module.training_loss(batch)
            opt.zero_grad()
            loss_value.backward()
            opt.step()
            losses.append(loss_value.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses[:10] + losses[-10:]
    words = dm.vocab.words
    near = nearest_neighbours(net.in_embed.weight.detach(), torch.arange(len(words)), k=3)
    same_topic = sum(words[j][:2] == words[i][:2] for i in range(len(words)) for j in near[i].tolist())
    assert same_topic / near.numel() > 0.8


def test_nce_uses_the_noise_correction_and_negative_sampling_ignores_it(tmp_path):
    dm = _dm(tmp_path, _topic_corpus(50), window=2, block_size=4, batch_size=32, noise_samples=8)
    batch = next(iter(dm.train_dataloader()))
    net = SkipGramNet(len(dm.vocab), 8)
    shifted = batch._replace(log_noise=batch.log_noise - 3.0)
    nce = SkipGramModule(net, optimizer=None, loss="nce")
    ns = SkipGramModule(net, optimizer=None, loss="negative_sampling")
    assert nce.training_loss(shifted).item() != pytest.approx(nce.training_loss(batch).item())
    assert ns.training_loss(shifted).item() == pytest.approx(ns.training_loss(batch).item())


def test_optimizers_without_sparse_support_are_refused():
    params = SkipGramNet(10, 4).parameters()
    with pytest.raises(FodlError, match="sparse gradients.*optimizer=sgd"):
        _check_sparse_optimizer(torch.optim.Adam(params))
    with pytest.raises(FodlError):
        _check_sparse_optimizer(torch.optim.SGD(SkipGramNet(10, 4).parameters(), lr=0.1, momentum=0.9))
    _check_sparse_optimizer(torch.optim.SGD(SkipGramNet(10, 4).parameters(), lr=0.1))
    _check_sparse_optimizer(torch.optim.Adagrad(SkipGramNet(10, 4).parameters()))


# -- analogy evaluation ------------------------------------------------------------------

TOY_QUESTIONS = """: family
man woman king queen
man woman boy girl
king queen Boy Girl
man woman uncle aunt
: capitals
paris france rome italy
rome italy paris spain
"""


def _toy_vectors():
    """3CosAdd solves family questions exactly; 'rome : italy :: paris : ?' answers france."""
    words = ["man", "woman", "king", "queen", "boy", "girl", "paris", "france", "rome", "italy",
             "spain", "noise"]
    e = torch.eye(8)
    gender, royal, young, capital = e[0], e[1], e[2], e[3]
    v = {"man": e[4], "woman": e[4] + gender, "king": e[4] + royal, "queen": e[4] + royal + gender,
         "boy": e[4] + young, "girl": e[4] + young + gender, "paris": e[5] + capital,
         "france": e[5], "rome": e[6] + capital, "italy": e[6], "spain": e[7], "noise": e[0] * -1}
    return words, torch.stack([v[w] for w in words])


def test_analogy_evaluator_on_a_hand_made_set(tmp_path):
    (tmp_path / "q.txt").write_text(TOY_QUESTIONS)
    qs = read_analogies(tmp_path / "q.txt")
    assert qs.sections == ["family", "capitals"] and len(qs.words) == 6
    words, vectors = _toy_vectors()
    aset = encode_analogies(qs, words, restrict=30000)
    r = evaluate_analogies(vectors, aset)
    fam, cap = r["sections"]
    # family: 3 evaluated ("uncle aunt" skipped), all right; capitals: spain wrong (france)
    assert (fam["correct"], fam["evaluated"], fam["asked"]) == (3, 3, 4)
    assert (cap["correct"], cap["evaluated"]) == (1, 2) and cap["acc"] == 0.5
    assert r["total"] == pytest.approx(4 / 5) and r["asked"] == 6
    # restricted to the 6 most frequent words, the capitals section drops out
    r6 = evaluate_analogies(vectors, encode_analogies(qs, words, restrict=6))
    assert r6["sections"][1]["evaluated"] == 0 and r6["sections"][1]["acc"] is None
    # specials before the words are never candidates
    r_sp = evaluate_analogies(torch.cat([torch.ones(1, 8), vectors]),
                              encode_analogies(qs, ["<unk>"] + words, skip=1))
    assert r_sp["correct"] == 4


def test_analogy_file_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("man woman king queen\n")
    with pytest.raises(FodlError, match="no ': section' header"):
        read_analogies(tmp_path / "bad.txt")
    (tmp_path / "bad2.txt").write_text(": s\nman woman king\n")
    with pytest.raises(FodlError, match="3 words, not 4"):
        read_analogies(tmp_path / "bad2.txt")
    with pytest.raises(FodlError, match="data.analogies=null"):
        read_analogies(tmp_path / "missing.txt")


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed (.[bench])")
def test_analogy_evaluator_matches_gensim(tmp_path):
    from gensim.models import KeyedVectors

    rng = random.Random(1)
    words = [f"w{i}" for i in range(150)] + ["Paris", "paris", "PARIS"]
    vectors = torch.randn(len(words), 10, generator=torch.Generator().manual_seed(1))
    lines = []
    for s in range(3):
        lines.append(f": section{s}")
        for _ in range(120):
            lines.append(" ".join(rng.choice(words + ["oov"]) for _ in range(4)))
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    kv = KeyedVectors(10)
    kv.add_vectors(words, vectors.numpy())
    for restrict in (100, 1000):
        score, sections = kv.evaluate_word_analogies(str(tmp_path / "q.txt"), restrict_vocab=restrict)
        ours = evaluate_analogies(vectors, encode_analogies(read_analogies(tmp_path / "q.txt"), words, restrict))
        assert [len(s["correct"]) for s in sections[:-1]] == [s["correct"] for s in ours["sections"]]
        assert [len(s["correct"]) + len(s["incorrect"]) for s in sections[:-1]] == \
            [s["evaluated"] for s in ours["sections"]]
        assert ours["total"] == pytest.approx(score)


# -- configs, training, checkpoints, scripts ----------------------------------------------


def test_model_skipgram_selects_the_book_setup(tmp_path):
    for over in (["model=skipgram"], ["experiment=book/ch6_skipgram"]):
        cfg = train_cfg(tmp_path, SHARED_DATA, *over)
        assert cfg.data.corpus.startswith("imdb/") and cfg.data.batch_size == 32
        assert (cfg.data.window, cfg.data.num_skips, cfg.data.noise_samples) == (5, 4, 64)
        assert (cfg.data.max_size, cfg.data.unk, cfg.data.subsample) == (10000, True, 0.0)
        assert cfg.model.loss == "nce" and cfg.model.net.embedding_dim == 128
        assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1
        assert cfg.trainer.max_epochs == 5 and cfg.monitor == "val/analogy_acc"
    fast = train_cfg(tmp_path, SHARED_DATA, "experiment=fast/skipgram")
    assert fast.model.loss == "negative_sampling" and fast.data.subsample == 1e-3
    assert fast.data.num_skips is None and fast.model.net.vocab_size == 30000


def _corpus_run(tmp_path, *extra):
    (tmp_path / "c.txt").write_text(_topic_corpus(200) + "\n")
    (tmp_path / "q.txt").write_text(": topics\n" + "\n".join(
        f"t{t}wa t{t}wb t{u}wa t{u}wb" for t in "abcde" for u in "abcde" if t != u) + "\n")
    return compose_train([f"paths.data_dir={tmp_path}", *FAST, "experiment=fast/skipgram", "data=corpus",
                     f"data.corpus={tmp_path / 'c.txt'}", f"data.analogies={tmp_path / 'q.txt'}",
                     "data.min_count=1", "data.batch_size=512", "model.net.embedding_dim=16",
                     "trainer.max_epochs=3", "callbacks.parameter_summaries.every_n_epochs=100", *extra],
                         tmp_path / "run")


def test_training_logs_analogies_and_stores_the_vocabulary(tmp_path, capsys):
    metrics = train(_corpus_run(tmp_path))
    capsys.readouterr()
    assert {"val/analogy_acc", "val/analogy/topics", "test/analogy_acc", "train/loss"} <= set(metrics)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    words = ckpt["fodl_text"]["vocabularies"]["words"]["words"]
    assert words[0].startswith("t") and len(words) == 40

    import importlib.util as iu
    spec = iu.spec_from_file_location("word_vectors", ROOT / "scripts" / "word_vectors.py")
    script = iu.module_from_spec(spec)
    spec.loader.exec_module(script)
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert script.main(["neighbours", last, "tawa", "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("Nearest neighbor of tawa: ta")
    assert script.main(["analogy", last, "tawa", "tawb", "tbwa"]) == 0
    assert script.main(["evaluate", last, "--questions", str(tmp_path / "q.txt")]) == 0
    assert "| topics |" in capsys.readouterr().out
    assert script.main(["projector", last, "--out", str(tmp_path / "proj")]) == 0
    assert (tmp_path / "proj" / "projector_config.pbtxt").is_file()
    assert any((tmp_path / "proj").rglob("metadata.tsv"))
    assert script.main(["tsne", last, "--out", str(tmp_path / "t.png"), "--n", "40"]) == 0
    assert (tmp_path / "t.png").stat().st_size > 10000
    assert script.main(["neighbours", last, "zebra"]) == 2
    assert "Not in the vocabulary: zebra" in capsys.readouterr().err


def test_a_net_smaller_than_the_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FodlError, match=r"40 words but the net only 10 rows"):
        train(_corpus_run(tmp_path, "model.net.vocab_size=10"))


def test_training_without_analogies(tmp_path):
    with pytest.raises(FodlError, match="monitor=train/loss monitor_mode=min"):
        train(_corpus_run(tmp_path, "data.analogies=null"))
    metrics = train(_corpus_run(tmp_path, "data.analogies=null", "monitor=train/loss",
                                "monitor_mode=min", "trainer.max_epochs=1"))
    assert "train/loss" in metrics and not any(k.startswith("val/analogy") for k in metrics)


def test_text8_download_is_verified_before_it_is_kept(tmp_path, monkeypatch):
    import io
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not text8"))
    dm = CorpusDataModule("text8/text8.zip", data_dir=str(tmp_path), url="http://x/text8.zip",
                          sha1="6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e", analogies=None)
    with pytest.raises(FodlError, match="fails its checksum"):
        dm.prepare_data()
    assert not (tmp_path / "text8").exists()  # nothing kept, not even the directory it made
    dm.sha1 = None
    dm.prepare_data()
    assert (tmp_path / "text8" / "text8.zip").read_bytes() == b"not text8"
    no_dl = CorpusDataModule("text8/other.zip", data_dir=str(tmp_path), url="http://x", download=False)
    with pytest.raises(FodlError, match=r"does not exist \(data.download=false\)"):
        no_dl.prepare_data()


# -- real data ---------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_imdb_corpus_and_google_analogies(tmp_path):
    shared_file("imdb", "aclImdb_labelled_50k.tar.gz")
    q = read_analogies(shared_file("word2vec", "questions-words.txt"))
    assert len(q.words) == 19544 and len(q.sections) == 14 and q.sections[0] == "capital-common-countries"
    dm = CorpusDataModule("imdb/aclImdb_labelled_50k.tar.gz", data_dir=str(SHARED_DATA),
                          cache_dir=str(tmp_path), members=["*/pos/*.txt", "*/neg/*.txt"],
                          strip_html=True, max_documents=500, min_count=2, download=False)
    dm.setup("fit")
    assert dm.vocab.words[0] == "the" and {"a", "and"} <= set(dm.vocab.words[1:3])
    assert "br" not in dm.vocab.words[:500]
    assert dm.analogy is not None and 0 < len(dm.analogy.questions) < 19544
    batch = next(iter(dm.train_dataloader()))
    assert batch.words.shape[1] == dm.block_size + 2 * dm.window and batch.positive.any()
    assert isinstance(q, AnalogyQuestions)


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed (.[bench])")
def test_bench_word2vec_trains_both_on_one_token_file(tmp_path):
    from fodl.analysis.word2vec_bench import (
        Settings,
        format_results,
        run_fodl,
        run_gensim,
        write_token_file,
    )

    (tmp_path / "c.txt").write_text(_topic_corpus(100).replace("\n", "\n<br />"))
    token_file, tokens = write_token_file(tmp_path / "c.txt", tmp_path / "tokens.txt", strip_html=True)
    assert tokens == 100 * 20 and "br" not in token_file.read_text().split()
    (tmp_path / "q.txt").write_text(": topics\ntawa tawb tbwa tbwb\n")
    s = Settings(dim=8, min_count=1, epochs=1, threads=1)
    results = [run_gensim(token_file, s, tmp_path / "q.txt", 100),
               run_fodl(token_file, s, tmp_path / "q.txt", 100, ["data.batch_size=512"])]
    assert [r.vocab for r in results] == [40, 40]
    assert results[0].extra["gensim_evaluator_total"] == pytest.approx(results[0].analogy["total"])
    table = format_results(results, s, tokens, 100)
    assert "| gensim" in table and "| fodl skip-gram" in table and "| topics |" in table

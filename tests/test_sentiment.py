"""Chapter 7 sentiment LSTM: aclImdb readers (folder, tar.gz, unsafe members refused), the
cached numericalisation, length-bucketed batches, padding invariance of the masked max-pool,
training through train(), the vocabulary in the checkpoint, scripts/classify.py, the download
path, and the real archive."""

import io
import json
import random
import runpy
import sys
import tarfile
from functools import partial

import pytest
import torch

from conftest import FAST, ROOT, compose_train, run_script, shared_file
from fodl.checkpoint import read_checkpoint
from fodl.data.buckets import LengthBucketLoader
from fodl.data.imdb import IMDBDataModule, iter_reviews
from fodl.errors import FodlError, user_error
from fodl.models.sentiment import load_text_classifier
from fodl.nets.lstm import LSTMClassifierNet
from fodl.train import train

GOOD = ["great", "wonderful", "superb", "loved", "excellent", "moving"]
BAD = ["awful", "boring", "terrible", "hated", "worst", "dull"]
FILLER = ["the", "movie", "film", "plot", "actor", "was", "and", "a", "it", "story", "scene", "i"]


def review(rng, positive):
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 30))]
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if positive else BAD))
    text = " ".join(words)
    return text.capitalize() + ("!<br /><br />Café ★" if rng.random() < 0.3 else ".")


def make_aclimdb(root, n_train=120, n_test=60, seed=0):
    """``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` plus the files the real
    archive has besides the reviews (README, imdb.vocab, urls) that readers must skip."""
    rng = random.Random(seed)
    top = root / "aclImdb"
    for split, n in (("train", n_train), ("test", n_test)):
        for label in ("pos", "neg"):
            d = top / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                rating = rng.randint(7, 10) if label == "pos" else rng.randint(1, 4)
                (d / f"{i}_{rating}.txt").write_text(review(rng, label == "pos"), encoding="utf-8")
            # the url list: line i is the page of the film review i is about (10 films a label)
            (top / split / f"urls_{label}.txt").write_text("".join(
                f"http://www.imdb.com/title/tt{int(label == 'pos')}{i % 10:06d}/usercomments\n"
                for i in range(n // 2)))
    (top / "README").write_text("Large Movie Review Dataset v1.0\n")
    (top / "imdb.vocab").write_text("the\nmovie\n")
    return top


def tar_of(folder, path, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
        for name, data, kind in extra:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin-wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = ["model=lstm_sentiment", "model.net.embedding_dim=16", "model.net.hidden_size=16",
         "model.net.dropout=0.1", "data.max_size=100", "data.val_size=40", "data.batch_size=16",
         "data.eval_batch_size=64", "data.max_len=40", "data.bucket_batches=4", "optimizer.lr=0.02",
         "model.net.bigram_buckets=1024"]


# -- readers -------------------------------------------------------------------------------
def test_folder_and_archive_readers_agree(tmp_path):
    top = make_aclimdb(tmp_path)
    archive = tar_of(top, tmp_path / "aclImdb_v1.tar.gz")
    a = [(s, lab, t) for s, _, lab, t in iter_reviews(top)]
    b = [(s, lab, t) for s, _, lab, t in iter_reviews(archive)]
    assert a == b and len(a) == 180  # README, imdb.vocab, urls_*.txt skipped
    assert {(s, lab) for s, lab, _ in a} == {("train", 0), ("train", 1), ("test", 0), ("test", 1)}
    assert any("Café ★" in t for _, _, t in a)  # UTF-8 decoded
    # the DataModule finds either under data_dir
    for root in (tmp_path, ):
        dm = IMDBDataModule(root, val_size=20, download=False)
        assert dm.source_path() == top


@pytest.mark.parametrize("name,kind", [("aclImdb/train/pos/../../../evil.txt", "file"),
                                       ("/tmp/evil.txt", "file"),
                                       ("aclImdb/train/pos/link.txt", "symlink")])
def test_archive_with_an_unsafe_member_is_refused(tmp_path, name, kind):
    top = make_aclimdb(tmp_path / "src", 8, 8)
    d = tmp_path / "data" / "imdb"
    d.mkdir(parents=True)
    tar_of(top, d / "aclImdb_v1.tar.gz", [(name, b"pwned", kind)])
    dm = IMDBDataModule(tmp_path / "data", cache_dir=str(tmp_path / "cache"), val_size=2)
    with pytest.raises(FodlError, match="unsafe member"):
        dm.setup("fit")
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "cache").glob("*"))


def test_not_the_layout_is_a_clear_error(tmp_path):
    (tmp_path / "imdb" / "aclImdb" / "train" / "pos").mkdir(parents=True)
    (tmp_path / "imdb" / "aclImdb" / "test").mkdir(parents=True)
    (tmp_path / "imdb" / "aclImdb" / "train" / "pos" / "0_9.txt").write_text("good")
    with pytest.raises(FodlError, match="all of one class|no test reviews"):
        IMDBDataModule(tmp_path, val_size=0).setup()
    with pytest.raises(FodlError, match="data.download=false"):
        IMDBDataModule(tmp_path / "nothing", download=False).setup()


def test_official_archive_is_downloaded_with_its_md5(tmp_path, monkeypatch):
    top = make_aclimdb(tmp_path / "src", 8, 8)
    calls = []

    def fake_download(urls, dest, md5=None, timeout=60):
        calls.append((urls[0], md5, dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        return tar_of(top, dest)

    monkeypatch.setattr("fodl.data.imdb.download", fake_download)
    dm = IMDBDataModule(tmp_path / "data", val_size=2)
    dm.setup()
    assert calls == [("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                      "7c2ac02c03563afcf9b574c7e56c153a", tmp_path / "data" / "imdb" / "aclImdb_v1.tar.gz")]
    assert len(dm.splits["test"][2]) == 8


# -- numericalisation ------------------------------------------------------------------------
def test_vocabulary_cut_padding_and_cache(tmp_path, monkeypatch):
    top = make_aclimdb(tmp_path)
    (top / "train" / "neg" / "99_1.txt").write_text("<br />")  # no word at all
    dm = IMDBDataModule(tmp_path, cache_dir=str(tmp_path / "cache"), max_size=12, max_len=6, val_size=20)
    dm.setup()
    v = dm.vocab
    assert len(v) == 12 and v.words[:2] == ["<pad>", "<unk>"]
    tokens, lengths, labels = dm.splits["train"]
    assert tokens.shape[1] == 6 and lengths.max() == 6 and lengths.min() >= 1
    assert len(labels) == 121 - 20 and (tokens[torch.arange(6) >= lengths.unsqueeze(1)] == 0).all()
    assert (tokens[torch.arange(6) < lengths.unsqueeze(1)] > 0).all()  # no pad inside a review
    assert (tokens == v.unk_id).any()  # words beyond the 10 most frequent
    # the tokenised reviews are cached: a second setup reads no review
    monkeypatch.setattr("fodl.data.imdb.iter_reviews", lambda *a: (_ for _ in ()).throw(AssertionError))
    again = IMDBDataModule(tmp_path, cache_dir=str(tmp_path / "cache"), max_size=20, max_len=8, val_size=20)
    again.setup()
    assert len(again.vocab) == 20 and again.splits["train"][0].shape[1] <= 8


# -- batches --------------------------------------------------------------------------------
def test_length_buckets_are_dense_cover_everything_and_reshuffle():
    g = torch.Generator().manual_seed(0)
    n = 500
    lengths = torch.randint(1, 200, (n,), generator=g)
    tokens = torch.where(torch.arange(200) < lengths.unsqueeze(1), 5, 0)
    ids = torch.arange(n)
    loader = LengthBucketLoader((tokens, lengths, ids), 20, bucket_batches=5, shuffle=True, seed=3)
    epoch0 = list(loader)
    assert len(epoch0) == len(loader) == 25
    seen = torch.cat([b[2] for b in epoch0])
    assert sorted(seen.tolist()) == list(range(n))  # every review once
    for tok, lens, _ in epoch0:
        assert tok.shape[1] == int(lens.max())  # cut to the longest: no column of only padding
    spread = sum(int(lens.max() - lens.min()) for _, lens, _ in epoch0) / len(epoch0)
    plain = LengthBucketLoader((tokens, lengths, ids), 20, bucket_batches=0, shuffle=True, seed=3)
    plain_spread = sum(int(lens.max() - lens.min()) for _, lens, _ in plain) / len(plain)
    assert spread < plain_spread / 4  # buckets: batches of similar lengths
    def padding(batches):
        return sum(int(t.numel() - lens.sum()) for t, lens, *_ in batches) / int(lengths.sum())

    assert padding(epoch0) < 0.25 and padding(plain) > 0.6  # pools of 100 reviews: ~18% padding
    whole = LengthBucketLoader((tokens, lengths, ids), 20, bucket_batches=25, shuffle=True, seed=3)
    assert padding(whole) < 0.05  # one pool of all 500 (the real config: pools of 1,600)
    again = [b[2] for b in LengthBucketLoader((tokens, lengths, ids), 20, bucket_batches=5, shuffle=True, seed=3)]
    assert all(torch.equal(a[2], b) for a, b in zip(epoch0, again))  # a function of (seed, epoch)
    loader.set_epoch(1)
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(epoch0, loader))
    evaluation = list(LengthBucketLoader((tokens, lengths, ids), 64, shuffle=False))
    order = torch.cat([b[1] for b in evaluation])
    assert torch.equal(order, lengths.sort(descending=True, stable=True).values)


# -- the net: padding never reaches the max-pool -----------------------------------------------
@pytest.mark.parametrize("bidirectional,pack,output", [(False, False, "linear"), (False, True, "book"),
                                                       (True, False, "linear")])
def test_appending_padding_does_not_change_a_prediction(bidirectional, pack, output):
    torch.manual_seed(0)
    net = LSTMClassifierNet(50, 8, 8, bidirectional=bidirectional, pack=pack, output=output).eval()
    if output == "book":  # give batch norm non-trivial running statistics
        net.bn.running_mean.uniform_(-1, 1)
    lengths = torch.tensor([7, 3, 5])
    tokens = torch.randint(2, 50, (3, 7)) * (torch.arange(7) < lengths.unsqueeze(1))
    ref = net(tokens, lengths)
    for extra in (1, 13):
        padded = torch.cat([tokens, torch.zeros(3, extra, dtype=torch.long)], 1)
        assert torch.allclose(net(padded, lengths), ref, atol=1e-6)
        # and a review alone equals the same review in a padded batch
        alone = torch.cat([net(tokens[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(3)])
        assert torch.allclose(alone, ref, atol=1e-5)
    # the check can fail: reading the padding as words changes the prediction
    assert not torch.allclose(net(tokens, torch.full((3,), 7)), ref, atol=1e-4)


def test_net_shapes_and_book_init():
    net = LSTMClassifierNet()  # the book: 30,000 x 512, LSTM 512, 2 classes
    assert net.embed.weight.shape == (30000, 512) and net.lstm.hidden_size == 512
    assert net.fc.out_features == 2 and net.bn is None and net.drop.p == 0.5
    assert abs(net.embed.weight[1:].std().item() - (1 / 30000) ** 0.5) < 1e-3
    assert (net.embed.weight[0] == 0).all()
    b = LSTMClassifierNet(10, 4, 4, output="book", bidirectional=True)
    assert b.bn is not None and not b.pack and b(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 1])).shape == (2, 2)


# -- training, checkpoint, CLI ------------------------------------------------------------------
def test_fast_dev_run(tmp_path):
    make_aclimdb(tmp_path / "data" / "imdb")
    cfg = compose_train([f"paths.data_dir={tmp_path / 'data'}", *FAST, *SMALL,
                         "+trainer.fast_dev_run=true"], tmp_path / "run")
    metrics = train(cfg)
    assert "train/loss" in metrics and "test/acc" in metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imdb")
    make_aclimdb(tmp / "data" / "imdb", 240, 120)
    cfg = compose_train([f"paths.data_dir={tmp / 'data'}", *FAST, *SMALL, "trainer.max_epochs=8"],
                        tmp / "run")
    metrics = train(cfg)
    ckpt = sorted((tmp / "run" / "checkpoints").glob("epoch*.ckpt"))[0]
    return metrics, ckpt, tmp / "data"


def test_lstm_learns_the_tiny_reviews(trained):
    metrics = trained[0]
    assert metrics["val/acc"] > 0.9 and metrics["test/acc"] > 0.9


def test_vocabulary_round_trips_through_the_checkpoint(trained):
    _, ckpt, data = trained
    raw = read_checkpoint(ckpt)  # weights_only
    assert raw["fodl_text"]["settings"] == {"tokenizer": "words", "lowercase": True, "max_len": 40,
                                            "labels": ["neg", "pos"]}
    model = load_text_classifier(str(ckpt))
    dm = IMDBDataModule(data, max_size=100, val_size=40, max_len=40)
    dm.setup()
    assert model.vocab.words == dm.vocab.words and model.vocab.counts == dm.vocab.counts
    tokens, lengths = model.encode(["The movie was GREAT!<br />", ""])
    assert lengths.tolist() == [5, 1] and tokens[1, 0] == model.vocab.unk_id  # the ! is a token
    p = model.classify(["a superb and wonderful film", "an awful boring plot, the worst"])
    assert p[0, 1] > 0.5 and p[1, 0] > 0.5


def test_classify_cli(trained, tmp_path, monkeypatch, capsys):
    _, ckpt, _ = trained
    r = run_script("classify.py", [str(ckpt), "I loved it: superb, moving, excellent!",
                                   "Awful. Boring and dull, the worst film."], cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert [x[0] for x in lines] == ["pos", "neg"] and all(0.5 < float(x[1]) <= 1 for x in lines)
    cli = runpy.run_path(str(ROOT / "scripts" / "classify.py"))
    monkeypatch.setattr(sys, "argv", ["classify.py", str(tmp_path / "nope.ckpt"), "x"])
    assert cli["main"]() == 2 and "does not exist" in capsys.readouterr().err


def test_benchmark_plain_loop_gets_the_same_batches(tmp_path):
    make_aclimdb(tmp_path / "imdb")
    dm = IMDBDataModule(tmp_path, max_len=40, val_size=20, batch_size=8, bucket_batches=3)
    dm.setup()
    ours = list(dm.train_dataloader())
    plain = list(dm.benchmark_loader(torch.device("cpu")))
    assert len(ours) == len(plain) and all(
        torch.equal(a, b) for x, y in zip(ours, plain) for a, b in zip(x, y))
    assert dm.train_tokens == int(dm.splits["train"][1].sum())


# -- the real archive ------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_imdb_archive_counts():
    archive = shared_file("imdb", "aclImdb_labelled_50k.tar.gz")
    counts = {}
    for split, _, label, _ in iter_reviews(archive):
        counts[split, label] = counts.get((split, label), 0) + 1
    assert counts == {("train", 0): 12500, ("train", 1): 12500, ("test", 0): 12500, ("test", 1): 12500}


@pytest.mark.parametrize("experiment", ["book/ch7_lstm_sentiment", "fast/lstm_sentiment",
                                        "fast/lstm_sentiment_gpu"])
def test_experiments_run(tmp_path, experiment):
    make_aclimdb(tmp_path / "data" / "imdb")
    cpu = ["trainer.accelerator=cpu"] if experiment.endswith("_gpu") else []
    cfg = compose_train([f"paths.data_dir={tmp_path / 'data'}", *FAST, f"experiment={experiment}", *cpu,
                         "model.net.embedding_dim=8", "model.net.hidden_size=8", "data.max_size=100",
                         "data.val_size=20", "+trainer.fast_dev_run=true"], tmp_path / "run")
    assert "test/acc" in train(cfg)
    if experiment.endswith("_gpu"):  # what call 1 on the H200 chose (docs/ch07_sentiment.md)
        assert cfg.data.val_split == "films" and cfg.model.net.word_dropout == 0.25
        assert cfg.callbacks.weight_averaging.decay == 0.998 and cfg.trainer.max_epochs == 3
    if experiment.startswith("book"):
        assert cfg.model.net.output == "book" and cfg.data.max_len == 500 and cfg.data.batch_size == 32
        assert cfg.model.net.dropout == 0.5 and cfg.optimizer.lr == 0.001
        net = cfg.model.net  # the book's net, whatever model=lstm_sentiment defaults to
        assert (net.bidirectional, net.pooling, net.bigram_buckets, net.word_dropout) == (False, "max", 0, 0.0)
        assert cfg.scheduler == {} or cfg.scheduler is None or "_target_" not in cfg.scheduler


def test_benchmark_compare_counts_tokens(tmp_path):
    from fodl.benchmark import compare

    make_aclimdb(tmp_path / "imdb")
    extra = [o for o in SMALL if not o.startswith("model=")] + [
        "trainer.enable_model_summary=false", "+trainer.limit_train_batches=3", "logger=none", "callbacks=none"]
    r = compare("lstm_sentiment", str(tmp_path), epochs=2, extra=extra)
    dm = IMDBDataModule(tmp_path, max_len=40, val_size=40, batch_size=16, bucket_batches=4, max_size=100,
                        seed=42)  # the run config's seed
    dm.setup()
    first3 = list(dm.benchmark_loader(torch.device("cpu")))[:3]
    assert r["steps"] == 3 and r["tokens"] == sum(int(b[1].sum()) for b in first3)


# -- the options beyond the book (issue 27) ----------------------------------------------------
def _reviews(n=9, vocab=50, longest=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=g)
    lengths[0] = longest
    tokens = torch.randint(2, vocab, (n, longest), generator=g) * (torch.arange(longest) < lengths.unsqueeze(1))
    return tokens, lengths, torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("bidirectional,pooling,bigrams", [(False, "max", 0), (True, "maxmean", 0),
                                                           (False, "mean", 31)])
def test_bucketed_and_packed_batches_give_the_padded_loss(bidirectional, pooling, bigrams):
    torch.manual_seed(0)
    tokens, lengths, y = _reviews()
    padded = torch.cat([tokens, torch.zeros(len(y), 477, dtype=tokens.dtype)], 1)  # the book's 500
    for pack in (False, True):
        net = LSTMClassifierNet(50, 8, 8, bidirectional=bidirectional, pack=pack, pooling=pooling,
                                bigram_buckets=bigrams).eval()
        ref = torch.nn.functional.cross_entropy(net(padded, lengths), y, reduction="sum")
        loader = LengthBucketLoader((tokens, lengths, y), 4, bucket_batches=2, shuffle=True, seed=1)
        batches = list(loader)
        assert len(batches) == 3 and any(b[0].shape[1] < tokens.shape[1] for b in batches)
        total = sum(torch.nn.functional.cross_entropy(net(t, n), lab, reduction="sum") for t, n, lab in batches)
        assert torch.allclose(total, ref, atol=1e-5)
        # the check can fail: the padding read as words changes the logits
        assert not torch.allclose(net(padded, torch.full_like(lengths, 500)), net(padded, lengths), atol=1e-4)


@pytest.mark.parametrize("layers", [1, 2])
def test_bidirectional_in_place_reversal_equals_packed_sequences(layers):
    torch.manual_seed(0)
    tokens, lengths, _ = _reviews(6)
    packed = LSTMClassifierNet(50, 6, 7, num_layers=layers, bidirectional=True, pack=True).eval()
    fast = LSTMClassifierNet(50, 6, 7, num_layers=layers, bidirectional=True).eval()
    fast.load_state_dict(packed.state_dict())  # the same parameters, nn.LSTM's layout
    assert torch.allclose(fast.features(tokens, lengths), packed.features(tokens, lengths), atol=1e-6)
    # and so is each review alone (no padding: nn.LSTM's own bidirectional pass)
    alone = torch.cat([fast.features(tokens[i : i + 1, :n], lengths[i : i + 1])
                       for i, n in enumerate(lengths.tolist())])
    assert torch.allclose(fast.features(tokens, lengths), alone, atol=1e-6)


def test_bidirectional_and_maxmean_widen_the_features():
    tokens, lengths, _ = _reviews(4)
    widths = {}
    for bi in (False, True):
        for pooling in LSTMClassifierNet.POOLINGS:
            net = LSTMClassifierNet(50, 6, 10, bidirectional=bi, pooling=pooling).eval()
            widths[bi, pooling] = net.features(tokens, lengths).shape
            assert net.fc.in_features == widths[bi, pooling][1]
    assert widths[False, "max"] == widths[False, "mean"] == (4, 10)
    assert widths[True, "max"] == widths[False, "maxmean"] == (4, 20) and widths[True, "maxmean"] == (4, 40)
    with pytest.raises(ValueError, match="pooling"):
        LSTMClassifierNet(50, 6, 10, pooling="attention")


def test_pooling_modes_pool_only_the_real_steps():
    torch.manual_seed(0)
    tokens, lengths, _ = _reviews(5)
    nets = {p: LSTMClassifierNet(50, 6, 7, pooling=p).eval() for p in LSTMClassifierNet.POOLINGS}
    for p in ("mean", "maxmean"):
        nets[p].load_state_dict({k: v for k, v in nets["max"].state_dict().items() if not k.startswith("fc.")},
                                strict=False)
    feats = {p: net.features(tokens, lengths) for p, net in nets.items()}
    for i, n in enumerate(lengths.tolist()):  # each review alone, no padding at all
        out, _ = nets["max"].lstm(nets["max"].embed(tokens[i : i + 1, :n]))
        assert torch.allclose(feats["max"][i], out[0].amax(0), atol=1e-6)
        assert torch.allclose(feats["mean"][i], out[0].mean(0), atol=1e-6)
    assert torch.equal(feats["maxmean"], torch.cat([feats["max"], feats["mean"]], 1))


def test_word_dropout_only_in_training():
    torch.manual_seed(0)
    tokens = torch.randint(2, 50, (8, 200))
    lengths = torch.full((8,), 200)
    net = LSTMClassifierNet(50, 6, 7, dropout=0.0, word_dropout=0.5)
    plain = LSTMClassifierNet(50, 6, 7, dropout=0.0)
    plain.load_state_dict(net.state_dict())
    x = net.inputs(tokens)  # training mode: about half the token vectors are zero
    dropped = (x == 0).all(-1).float().mean().item()
    assert 0.4 < dropped < 0.6 and not torch.equal(net(tokens, lengths), net(tokens, lengths))
    kept = (x != 0).any(-1)
    assert torch.equal(x[kept], plain.embed(tokens)[kept])  # the kept ones are not rescaled
    net.eval(), plain.eval()
    assert (net.inputs(tokens) != 0).all(-1).all()
    assert torch.equal(net(tokens, lengths), plain(tokens, lengths))  # evaluation: no word dropped
    with pytest.raises(ValueError, match="word_dropout"):
        LSTMClassifierNet(50, 6, 7, word_dropout=1.0)


def test_bigram_inputs_see_the_previous_word():
    torch.manual_seed(0)
    a = torch.tensor([[5, 7, 9, 11]])
    b = torch.tensor([[6, 7, 9, 11]])  # only the first word differs
    for buckets in (0, 101):
        net = LSTMClassifierNet(50, 6, 7, bigram_buckets=buckets).eval()
        xa, xb = net.inputs(a), net.inputs(b)
        assert torch.equal(xa[0, 2:], xb[0, 2:])  # steps 2, 3 see the same two words
        assert torch.equal(xa[0, 1], xb[0, 1]) == (buckets == 0)  # step 1 sees (w0, w1)


def test_trigram_inputs_see_the_two_previous_words():
    torch.manual_seed(0)
    a = torch.tensor([[5, 7, 9, 11, 13]])
    b = torch.tensor([[6, 7, 9, 11, 13]])  # only the first word differs
    bigrams = LSTMClassifierNet(50, 6, 7, bigram_buckets=101).eval()
    both = LSTMClassifierNet(50, 6, 7, bigram_buckets=101, trigram_buckets=103).eval()
    assert both.trigram_embed.weight.shape == (103, 6)
    both.load_state_dict(bigrams.state_dict(), strict=False)
    for net in (bigrams, both):
        xa, xb = net.inputs(a), net.inputs(b)
        assert torch.equal(xa[0, 3:], xb[0, 3:])  # steps 3, 4 see the same three words
        assert torch.equal(xa[0, 2], xb[0, 2]) == (net is bigrams)  # step 2 sees (w0, w1, w2)
    # the trigram table adds to the word + bigram inputs; a one-word review works too
    assert not torch.equal(both.inputs(a), bigrams.inputs(a))
    assert both(torch.tensor([[4]]), torch.tensor([1])).shape == (1, 2)


def test_bench_sentiment_on_a_tiny_tree(trained, monkeypatch, capsys, tmp_path):
    metrics, ckpt, data = trained
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_sentiment.py"))
    out = tmp_path / "peer" / "metrics.json"   # what the results pipeline reads (its ch7_sentiment_linear row)
    monkeypatch.setattr(sys, "argv", ["bench_sentiment.py", "--data-dir", str(data), "--val-size", "40",
                                      "--ckpt", str(ckpt), "--seed", "0", "--metrics-json", str(out)])
    assert bench["main"]() == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 3 and "LogisticRegression(C=4)" in rows[0][0] and "200 training reviews" in rows[0][0]
    linear, lstm, both = (float(r[1].rstrip("%")) for r in rows)
    assert linear > 90.0  # the tiny reviews are separable by their words
    written = json.loads(out.read_text())
    assert 100 * written["test/acc"] == pytest.approx(linear, abs=0.005)
    assert lstm == pytest.approx(100 * metrics["test/acc"], abs=0.01)  # the same test set, same model
    assert 100 * written["lstm/acc"] == pytest.approx(lstm, abs=0.005)
    # the ensemble: the mean of the two models' class probabilities, review by review
    from fodl.data.imdb import IMDBDataModule
    from fodl.models.sentiment import load_text_classifier, probabilities_on

    model = load_text_classifier(ckpt)
    dm = IMDBDataModule(str(data), None, download=False, val_size=40, split_seed=0)
    reviews = dm.reviews()
    test_reviews, labels = reviews["test"]
    p = probabilities_on(model, test_reviews, batch_size=7)  # batches of sorted lengths, put back in order
    for i in (0, 5, len(test_reviews) - 1):
        assert torch.allclose(p[i], probabilities_on(model, [test_reviews[i]])[0], atol=1e-5)
    q = torch.as_tensor(bench["linear_baseline"](reviews["train"], reviews["test"])["proba"], dtype=torch.float32)
    expected = float(((p + q).argmax(-1) == labels).float().mean())
    assert written["ensemble/acc"] == pytest.approx(expected) and both == pytest.approx(100 * expected, abs=0.005)
    monkeypatch.setattr(sys, "argv", ["bench_sentiment.py", "--data-dir", str(data / "nothing")])
    assert bench["main"]() == 2 and "No IMDB data" in capsys.readouterr().err


def test_weight_averaging_is_validated_checkpointed_and_tested(tmp_path):
    """fodl.callbacks.EMAWeightAveraging (Lightning's callback) under fodl's manual loop: one
    update per optimizer step, the average in the checkpoint's state_dict, and the test after
    fit scores the average (Lightning's own callback would load the raw weights back)."""
    from fodl.train import build

    make_aclimdb(tmp_path / "data" / "imdb")
    cfg = compose_train([f"paths.data_dir={tmp_path / 'data'}", *FAST, *SMALL, "trainer.max_epochs=2",
                         "+callbacks.ema._target_=fodl.callbacks.EMAWeightAveraging",
                         "+callbacks.ema.decay=0.5"], tmp_path / "run")
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    steps = trainer.global_step
    assert steps == 2 * len(dm.train_dataloader()) and model._direct  # fodl's direct step path
    ckpt = read_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert int(ckpt["averaging_state"]["n_averaged"]) in (steps // 2, steps)  # one per step
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]
    assert not torch.equal(raw["net.embed.weight"], averaged["net.embed.weight"])
    trainer.test(model, datamodule=dm, ckpt_path=trainer.checkpoint_callback.best_model_path,
                 weights_only=True)
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    # a misspelt setting is a config error naming it
    with pytest.raises(FodlError, match="callbacks.ema.decy"):
        build(compose_train([f"paths.data_dir={tmp_path / 'data'}", *FAST, *SMALL,
                             "+callbacks.ema._target_=fodl.callbacks.EMAWeightAveraging",
                             "+callbacks.ema.decy=0.5"], tmp_path / "run2"))


def test_film_split_holds_out_whole_films(tmp_path):
    """data.val_split=films: every review of a held-out film is in validation, none in training
    (each review names its film, zfilm<letter>, in its text, and the url lists map it as aclImdb's do)."""
    top = make_aclimdb(tmp_path, n_train=120, n_test=20)
    for label in ("pos", "neg"):
        urls = []
        for i in range(60):
            film = (i * 7 + (label == "pos")) % 13  # 13 films, several reviews each
            path = next((top / "train" / label).glob(f"{i}_*.txt"))
            path.write_text(path.read_text(encoding="utf-8") + f" zfilm{'abcdefghijklm'[film]}", encoding="utf-8")
            urls.append(f"http://www.imdb.com/title/tt{film}/usercomments")
        (top / "train" / f"urls_{label}.txt").write_text("\n".join(urls) + "\n")
    archive = tar_of(top, tmp_path / "aclImdb_v1.tar.gz")

    def films_of(dm, split):
        return {w for words in dm.reviews()[split][0] for w in words if w.startswith("zfilm")}

    seen = []
    for source in (str(top), str(archive)):
        dm = IMDBDataModule(tmp_path, source=source, val_size=20, val_split="films")
        dm.setup()
        val, train = films_of(dm, "val"), films_of(dm, "train")
        assert val and train and not val & train and len(val | train) == 13
        assert 20 <= len(dm.splits["val"][2]) < 20 + 60 and len(dm.splits["val"][2]) + len(dm.splits["train"][2]) == 120
        seen.append(sorted(val))
    assert seen[0] == seen[1]  # folder and archive: the same films held out
    # the check can fail: a random split of the same size puts most films on both sides
    rnd = IMDBDataModule(tmp_path, source=str(top), val_size=20)
    rnd.setup()
    assert films_of(rnd, "val") & films_of(rnd, "train")
    # no url lists: a clear error; a bad name: a config error
    (top / "train" / "urls_neg.txt").unlink()
    with pytest.raises(FodlError, match="urls_neg.txt.*data.val_split=random"):
        IMDBDataModule(tmp_path, source=str(top), val_size=20, val_split="films").setup()
    with pytest.raises(FodlError, match="data.val_split='film'"):
        IMDBDataModule(tmp_path, val_split="film")


def test_ngram_dropout_takes_only_the_ngram_inputs_in_training():
    torch.manual_seed(0)
    tokens = torch.randint(2, 50, (8, 200))
    net = LSTMClassifierNet(50, 6, 7, dropout=0.0, bigram_buckets=101, trigram_buckets=103,
                            ngram_dropout=0.5)
    words = net.embed(tokens)
    net.eval()
    full = net.inputs(tokens)  # word + bigram + trigram at every step
    net.train()
    x = net.inputs(tokens)
    only_word = torch.isclose(x, words).all(-1)
    full_step = torch.isclose(x, full).all(-1)
    assert 0.4 < only_word.float().mean().item() < 0.6  # about half lose their n-gram inputs
    assert (only_word ^ full_step).all()  # every step is one or the other: the word always stays
    with pytest.raises(ValueError, match="ngram_dropout"):
        LSTMClassifierNet(50, 6, 7, ngram_dropout=1.0)


def test_ngram_max_norm_caps_the_rows_looked_up():
    torch.manual_seed(0)
    net = LSTMClassifierNet(50, 6, 7, bigram_buckets=101, ngram_max_norm=0.01)
    with torch.no_grad():
        net.bigram_embed.weight.mul_(100.0)  # rows of norm ~0.6
    tokens = torch.randint(2, 50, (2, 30))
    net.inputs(tokens)
    norms = net.bigram_embed.weight.norm(dim=1)
    assert (norms <= 0.01 + 1e-6).sum() > 0 and (norms > 0.1).sum() > 0  # looked-up rows only
    assert net.embed.max_norm is None  # the word table is left alone


def test_ngram_parameter_group_weight_decay_and_lr_scale(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=fast/lstm_sentiment", "model.net.vocab_size=50",
                         "model.net.bigram_buckets=101", "model.net.trigram_buckets=103",
                         "model.ngram_weight_decay=0.01", "model.ngram_lr_scale=0.1"], tmp_path / "run")
    model = instantiate(cfg.model)
    groups = model.parameter_groups()
    tables = {id(model.net.bigram_embed.weight), id(model.net.trigram_embed.weight)}
    assert {id(p) for p in groups[1]["params"]} == tables
    assert not tables & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + 2 == len(list(model.parameters()))
    # the optimizer and the one-cycle schedule get the group's rate and decay
    model.optimizer_factory = lambda params: torch.optim.Adam(params, lr=0.003)
    model.scheduler_factory = None
    opt = model.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.003, 0.0003])
    assert [g["weight_decay"] for g in opt.param_groups] == [0, 0.01]
    model.scheduler_factory = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.003,
                                                total_steps=10)
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sched.optimizer.param_groups[1]["max_lr"] == pytest.approx(0.0003)
    assert sched.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.003)
    # off: one group, as every other family
    plain = instantiate(compose_train(["experiment=fast/lstm_sentiment", "model.net.vocab_size=50",
                                       "model.ngram_weight_decay=0"],
                                      tmp_path / "plain").model)
    assert len(plain.parameter_groups()) == 1
    with pytest.raises(Exception) as err:  # Hydra wraps it; the entry points unwrap it
        instantiate(compose_train(["experiment=fast/lstm_sentiment", "model.net.bigram_buckets=0",
                                   "model.ngram_weight_decay=0.01"], tmp_path / "none").model)
    assert "bigram_buckets" in str(user_error(err.value))


def test_adversarial_loss_adds_the_perturbed_loss():
    from fodl.models.sentiment import TextClassifierModule

    torch.manual_seed(0)
    net = LSTMClassifierNet(50, 6, 7, dropout=0.0, bidirectional=True, pooling="maxmean")
    tokens = torch.randint(2, 50, (4, 12))
    lengths = torch.tensor([12, 9, 5, 1])
    tokens[1, 9:] = 0; tokens[2, 5:] = 0; tokens[3, 1:] = 0  # noqa: E702
    y = torch.tensor([0, 1, 1, 0])
    batch = (tokens, lengths, y)
    clean = TextClassifierModule(net, None).training_loss(batch)
    adv = TextClassifierModule(net, None, adversarial=0.5).training_loss(batch)
    # the perturbation goes up the loss: its loss is above the clean one, and the two add
    assert adv.item() > 2 * clean.item()
    # a zero-sized perturbation gives twice the clean loss; gradients reach the embeddings
    zero = TextClassifierModule(net, None, adversarial=1e-12).training_loss(batch)
    assert zero.item() == pytest.approx(2 * clean.item(), rel=1e-5)
    adv.backward()
    assert net.embed.weight.grad is not None and net.embed.weight.grad.abs().sum() > 0

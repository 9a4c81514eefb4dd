"""Chapter 7 seq2seq with attention: pair readers (aligned files, TSV, mismatched counts),
attention masking, beam search against greedy, a tiny reversal task learned exactly, the
Multi30k download path, fast_dev_run of the experiments, scripts/translate.py, the benchmark's
plain loop, and the real Multi30k files."""

import gzip
import random
import runpy
import sys

import pytest
import torch

from conftest import FAST, ROOT, compose_train, run_script, shared_file
from fodl.checkpoint import read_checkpoint
from fodl.data.parallel import (
    MULTI30K_MD5,
    ParallelTextDataModule,
    detokenize,
    read_aligned,
    read_tsv,
    tokenize_sentence,
)
from fodl.errors import FodlError
from fodl.models.seq2seq import corpus_bleu, load_translator
from fodl.nets.seq2seq import Seq2SeqNet, beam_search, greedy_decode
from fodl.train import train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin-wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SYMBOLS = "abcdefghij"
RENAME = dict(zip(SYMBOLS, "klmnopqrst"))


def reversal_pairs(n, seed=0, lo=3, hi=7):
    """``source<TAB>target``: a random word string and the same words reversed and renamed
    (a -> k, b -> l ...), so the target vocabulary differs from the source's."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(SYMBOLS) for _ in range(rng.randint(lo, hi))]
        out.append((" ".join(words), " ".join(RENAME[w] for w in reversed(words))))
    return out


def write_tsv(path, pairs):
    path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    return path


def write_multi30k(root, n=(60, 12, 10), langs=("de", "en")):
    """``root/multi30k/{train,val,test_2016_flickr}.{de,en}.gz`` with reversal pairs."""
    d = root / "multi30k"
    d.mkdir(parents=True, exist_ok=True)
    for (stem, k), seed in zip(zip(("train", "val", "test_2016_flickr"), n), range(3)):
        pairs = reversal_pairs(k, seed)
        for side, lang in enumerate(langs):
            with gzip.open(d / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("".join(p[min(side, 1)] + "\n" for p in pairs))
    return root


# -- readers ------------------------------------------------------------------------------------
def test_aligned_files_tsv_and_gzip_read_the_same_pairs(tmp_path):
    pairs = [("Ein Mann fährt Fahrrad.", "A man rides a bike."), ("Zwei Hunde.", "Two dogs.")]
    (tmp_path / "a.de").write_text("".join(p[0] + "\r\n" for p in pairs), encoding="utf-8")
    with gzip.open(tmp_path / "a.en.gz", "wt", encoding="utf-8") as f:
        f.write("".join(p[1] + "\n" for p in pairs))
    write_tsv(tmp_path / "pairs.tsv", pairs)
    assert read_aligned(tmp_path / "a.de", tmp_path / "a.en.gz") == pairs
    assert read_tsv(tmp_path / "pairs.tsv") == pairs


def test_mismatched_line_counts_name_both_files(tmp_path):
    (tmp_path / "x.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "x.en").write_text("one\ntwo\n")
    with pytest.raises(FodlError) as e:
        read_aligned(tmp_path / "x.de", tmp_path / "x.en")
    msg = str(e.value)
    assert str(tmp_path / "x.de") in msg and str(tmp_path / "x.en") in msg
    assert "3 lines" in msg and "2 lines" in msg
    dm = ParallelTextDataModule(tmp_path, corpus="files",
                                files={"train": ["x.de", "x.en"]}, val_size=1)
    with pytest.raises(FodlError, match="different line counts"):
        dm.setup()


def test_tsv_line_without_a_tab_names_file_and_line(tmp_path):
    (tmp_path / "p.tsv").write_text("a b\tB A\nno tab here\n")
    with pytest.raises(FodlError, match=r"p.tsv, line 2: 'no tab here' has 1 tab-separated"):
        read_tsv(tmp_path / "p.tsv")


def test_tokenisation_and_detokenisation():
    toks = tokenize_sentence("Ein Mann (mit Hut) fährt Fahrrad, nicht wahr?")
    assert toks == ["ein", "mann", "(", "mit", "hut", ")", "fährt", "fahrrad", ",", "nicht",
                    "wahr", "?"]
    assert detokenize(toks) == "ein mann (mit hut) fährt fahrrad, nicht wahr?"
    assert tokenize_sentence("L'homme court.", lowercase=False) == ["L'homme", "court", "."]


def test_datamodule_splits_vocabularies_and_batches(tmp_path):
    write_tsv(tmp_path / "train.tsv", reversal_pairs(50))
    dm = ParallelTextDataModule(tmp_path, corpus="files", files={"train": "train.tsv"},
                                val_size=10, batch_size=8, min_count=1)
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [40, 10, 10]
    assert dm.src_vocab.words[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert set(dm.tgt_vocab.words[4:]) == set(RENAME.values())
    src, src_len, tgt, tgt_len, index = next(iter(dm.train_dataloader()))
    ref = dm.references["train"][int(index[0])]  # the raw target line of that pair
    s = dm.src_vocab.decode(src[0, : src_len[0]])
    t = dm.tgt_vocab.decode(tgt[0, : tgt_len[0]])
    assert s[-1] == "<eos>" and t[0] == "<bos>" and t[-1] == "<eos>"
    assert [RENAME[w] for w in reversed(s[:-1])] == t[1:-1] and ref.split() == t[1:-1]
    assert dm.batch_tokens((src, src_len, tgt, tgt_len, index)) == int(tgt_len.sum()) - len(tgt_len)


def test_multi30k_is_downloaded_with_its_md5(tmp_path, monkeypatch):
    src = write_multi30k(tmp_path / "src")
    calls = []

    def fake_download(urls, dest, md5=None, timeout=60):
        calls.append((urls[0], md5))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((src / "multi30k" / dest.name).read_bytes())
        return dest

    monkeypatch.setattr("fodl.data.parallel.download", fake_download)
    dm = ParallelTextDataModule(tmp_path / "data", src="de", tgt="en", min_count=1)
    dm.setup()
    assert len(calls) == 6 and ("https://raw.githubusercontent.com/multi30k/dataset/master/data/"
                                "task1/raw/train.de.gz", MULTI30K_MD5["train.de.gz"]) in calls
    assert len(dm.references["test"]) == 10
    with pytest.raises(FodlError, match="data.download=false"):
        ParallelTextDataModule(tmp_path / "empty", download=False).setup()
    with pytest.raises(FodlError, match="Multi30k has en, de, fr"):
        ParallelTextDataModule(tmp_path, src="cs")


# -- the net ------------------------------------------------------------------------------------
def small_net(attention, seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(embedding_dim=8, hidden_size=8, decoder_hidden_size=16, dropout=0.0)
    opts.update(kw)
    return Seq2SeqNet(20, 15, attention=attention, **opts).eval()


def batch(seed=0, b=4, width=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (b,), generator=g)
    lengths[0] = width
    src = torch.randint(4, 20, (b, width), generator=g) * (torch.arange(width) < lengths.unsqueeze(1))
    return src, lengths


@pytest.mark.parametrize("attention", ["bahdanau", "dot", "general"])
def test_attention_sums_to_one_and_is_zero_on_padding(attention):
    net = small_net(attention, **({"decoder_hidden_size": 16} if attention != "dot" else {}))
    src, lengths = batch()
    memory, state = net.encode(src, lengths)
    y = torch.full((4,), net.bos_id)
    for _ in range(3):
        logits, state, w = net.step(y, state, memory)
        assert torch.allclose(w.sum(-1), torch.ones(4), atol=1e-6)
        pad = torch.arange(src.shape[1]) >= lengths.unsqueeze(1)
        assert (w[pad] == 0).all() and (w[~pad] > 0).all()
        y = logits.argmax(-1)
    # padding never reaches the encoder: extra padding columns change no logit
    tgt = torch.randint(4, 15, (4, 5))
    ref = net(src, lengths, tgt)
    padded = torch.cat([src, torch.zeros(4, 6, dtype=torch.long)], 1)
    assert torch.allclose(net(padded, lengths, tgt), ref, atol=1e-5)
    # (the check can fail: reading the padding as words changes the output)
    assert not torch.allclose(net(padded, torch.full((4,), 13), tgt), ref, atol=1e-4)


@pytest.mark.parametrize("attention", ["general", "bahdanau"])
def test_scaled_scores_divide_luong_scores_by_sqrt_of_the_decoder_size(attention):
    scaled, plain = small_net(attention), small_net(attention, scaled_scores=False)
    src, lengths = batch()
    memory, _ = plain.encode(src, lengths)
    query = torch.randn(4, 1, 16)
    w_plain = torch.softmax(torch.bmm(query, memory.keys.transpose(1, 2)).masked_fill(
        ~memory.mask.unsqueeze(1), float("-inf")) / (4.0 if attention == "general" else 1.0), -1)
    if attention == "general":
        assert torch.allclose(scaled.attn(query, memory)[1], w_plain, atol=1e-6)
        assert not torch.allclose(plain.attn(query, memory)[1], w_plain, atol=1e-3)
    else:  # additive scores are bounded by v . tanh(...): never scaled
        assert torch.equal(scaled.attn(query, memory)[1], plain.attn(query, memory)[1])


def test_dot_attention_needs_matching_sizes():
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        Seq2SeqNet(20, 15, 8, 8, decoder_hidden_size=12, attention="dot")


@pytest.mark.parametrize("attention", ["bahdanau", "general", "none"])
def test_step_by_step_equals_teacher_forced_forward(attention):
    net = small_net(attention)
    src, lengths = batch(1)
    tgt = torch.randint(4, 15, (4, 6))
    full = net(src, lengths, tgt)
    memory, state = net.encode(src, lengths)
    steps = []
    for t in range(6):
        lg, state, _ = net.step(tgt[:, t], state, memory)
        steps.append(lg)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_teacher_forcing_below_one_feeds_predictions_in_training_only():
    net = small_net("general", teacher_forcing=0.0)
    src, lengths = batch(2)
    tgt = torch.randint(4, 15, (4, 6))
    evaluation = net(src, lengths, tgt)
    net.train()
    free = net(src, lengths, tgt)  # dropout 0: differs only by the fed words
    assert free.shape == evaluation.shape
    assert torch.allclose(free[:, 0], evaluation[:, 0], atol=1e-6)
    assert not torch.allclose(free, evaluation, atol=1e-4)


# -- decoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["bahdanau", "general", "none"])
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_of_one_is_greedy_exactly(attention, alpha):
    net = small_net(attention, seed=3)
    src, lengths = batch(3, b=6)
    g = greedy_decode(net, src, lengths, max_len=12, alpha=alpha)
    b = beam_search(net, src, lengths, beam_size=1, max_len=12, alpha=alpha, keep_greedy=False)
    assert b.tokens == g.tokens
    assert torch.equal(b.score, g.score) and torch.equal(b.ranking, g.ranking)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_is_never_worse_than_greedy_under_the_models_score(alpha):
    improved = 0
    for seed in range(6):
        net = small_net("bahdanau", seed=seed)
        net.out.bias.data[net.eos_id] -= 2.0  # longer outputs: more room for search to matter
        src, lengths = batch(seed, b=8)
        g = greedy_decode(net, src, lengths, max_len=10, alpha=alpha)
        b = beam_search(net, src, lengths, beam_size=4, max_len=10, alpha=alpha)
        assert (b.ranking >= g.ranking - 1e-5).all()
        improved += int((b.ranking > g.ranking + 1e-4).sum())
        # the reported score is the model's: re-scoring the returned words gives it back
        for i, toks in enumerate(b.tokens):
            seq = [net.bos_id] + toks + ([net.eos_id] if len(toks) < 10 else [])
            with torch.no_grad():
                logp = torch.log_softmax(net(src[i : i + 1], lengths[i : i + 1],
                                             torch.tensor([seq[:-1]])), -1)[0]
            total = float(logp.gather(1, torch.tensor(seq[1:]).unsqueeze(1)).sum())
            assert abs(total - float(b.score[i])) < 1e-3
    assert improved > 0  # the search finds better translations than greedy for some sentences


class BigramNet:
    """A stand-in decoder whose next-word log-probabilities depend only on the previous word,
    built so that beam search (size 2) prunes the greedy path after two words and ends worse:
    greedy <bos> A C <eos> has p = .6 * .2 * .95; the beam keeps B D / B E (.35 * .45 each >
    .6 * .2), whose continuations are all improbable."""

    pad_id, bos_id, eos_id, tgt_vocab_size, attn = 0, 2, 3, 10, None
    A, B, C, D, E = 4, 5, 6, 7, 8

    def __init__(self):
        table = torch.full((10, 10), 1e-3)
        table[self.bos_id, [self.A, self.B]] = torch.tensor([0.6, 0.35])
        table[self.A] = 0.08
        table[self.A, self.C] = 0.2
        table[self.B, [self.D, self.E]] = 0.45
        table[self.C, self.eos_id] = 0.95
        table[[self.D, self.E]] = 0.1
        table[[self.D, self.E], self.eos_id] = 0.05
        table[:, self.pad_id] = 1e-9
        self.logp = (table / table.sum(1, keepdim=True)).log()

    def encode(self, src, lengths):
        from fodl.nets.seq2seq import Memory

        b = src.shape[0]
        return Memory(torch.zeros(b, 1, 1), None, torch.ones(b, 1, dtype=torch.bool)), (torch.zeros(1, b, 1),)

    def step(self, y, state, memory):
        return self.logp[y], state, None


def test_pruning_can_lose_the_greedy_path_and_the_beam_keeps_greedy_as_a_candidate():
    net, src, lengths = BigramNet(), torch.ones(1, 3, dtype=torch.long), torch.tensor([3])
    g = greedy_decode(net, src, lengths, max_len=6)
    assert g.tokens == [[net.A, net.C]]
    pure = beam_search(net, src, lengths, beam_size=2, max_len=6, keep_greedy=False)
    assert pure.tokens[0][0] == net.B and float(pure.score) < float(g.score)  # what pruning does
    kept = beam_search(net, src, lengths, beam_size=2, max_len=6)
    assert kept.tokens == g.tokens and torch.equal(kept.score, g.score)
    wide = beam_search(net, src, lengths, beam_size=5, max_len=6, keep_greedy=False)
    assert wide.tokens == g.tokens  # a wider beam keeps the greedy path itself


def test_beam_stops_at_eos():
    net = small_net("general", seed=1)
    net.out.bias.data[net.eos_id] += 50.0  # <eos> is by far the most probable first word
    src, lengths = batch(1)
    out = beam_search(net, src, lengths, beam_size=3, max_len=30)
    assert out.tokens == [[]] * 4


# -- training ------------------------------------------------------------------------------------
TINY = ["model=seq2seq_attention", "data.corpus=files", "data.min_count=1",
        "data.src_max_size=20", "data.tgt_max_size=20", "data.batch_size=32",
        "data.eval_batch_size=100", "data.bucket_batches=4", "model.net.embedding_dim=32",
        "model.net.hidden_size=64", "model.net.decoder_hidden_size=64", "model.net.dropout=0.0",
        "model.beam_size=3", "optimizer.lr=0.02", "model.samples=2"]


def files_opt(d):
    return f"data.files={{train: {d / 'train.tsv'}, val: {d / 'val.tsv'}, test: {d / 'test.tsv'}}}"


def write_reversal_splits(d, n_train=1000):
    d.mkdir(parents=True, exist_ok=True)
    write_tsv(d / "train.tsv", reversal_pairs(n_train, 0))
    write_tsv(d / "val.tsv", reversal_pairs(100, 1))
    write_tsv(d / "test.tsv", reversal_pairs(100, 2))
    return d


def test_fast_dev_run(tmp_path):
    d = write_reversal_splits(tmp_path / "data", 100)
    cfg = compose_train([f"paths.data_dir={d}", *FAST, *TINY, files_opt(d),
                         "+trainer.fast_dev_run=true"], tmp_path / "run")
    metrics = train(cfg)
    assert {"train/loss", "test/bleu", "test/bleu_greedy", "test/bleu_beam", "test/ppl"} <= set(metrics)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reverse")
    d = write_reversal_splits(tmp / "data")
    cfg = compose_train([f"paths.data_dir={d}", *FAST, *TINY, files_opt(d), "trainer.max_epochs=10",
                         "model.net.attention=general"], tmp / "run")
    metrics = train(cfg)
    ckpt = sorted((tmp / "run" / "checkpoints").glob("epoch*.ckpt"))[0]
    return metrics, ckpt, tmp


@pytest.mark.slow
def test_ddp_scores_bleu_over_the_whole_split_as_one_process_does(tmp_path):
    """Two CPU processes each decode half of the test split (99 sentences: one shard padded
    with a repeat); the merged hypotheses give the BLEU and perplexity that a single-process
    evaluation of the same checkpoint gives."""
    import json

    d = write_reversal_splits(tmp_path / "data", 400)
    write_tsv(d / "test.tsv", reversal_pairs(99, 2))
    quiet = {"OMP_NUM_THREADS": "1"}
    r = run_script("train.py", [f"paths.data_dir={d}", *TINY, files_opt(d), "trainer.max_epochs=2",
                                "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path, quiet)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "seq2seq_attention" / "runs").iterdir()
    ddp = json.loads((run / "metrics.json").read_text())
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    from fodl.train import evaluate

    single = evaluate(compose_train([f"ckpt_path={best}", f"paths.data_dir={d}"], tmp_path / "ev",
                                    config_name="eval"))
    assert 0 < ddp["test/bleu_greedy"] < 100  # partly learned: a wrong merge would show
    for key in ("test/bleu_greedy", "test/bleu_beam", "test/ppl"):
        assert single[key] == pytest.approx(ddp[key], rel=1e-5), key


def test_reversal_is_learned_to_exact_match(trained):
    metrics, ckpt, _ = trained
    assert metrics["test/bleu_greedy"] > 95 and metrics["test/bleu_beam"] > 95
    assert metrics["val/ppl"] < 1.5
    model = load_translator(str(ckpt))
    pairs = reversal_pairs(100, 2)
    out = [t for t, _ in model.translate([a for a, _ in pairs], beam=True)]
    exact = sum(o == b for o, (_, b) in zip(out, pairs))
    assert exact >= 97, list(zip(out, pairs))[:5]


def test_tensorboard_gets_bleu_samples_and_attention_image(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, tmp = trained
    events = sorted((tmp / "run").rglob("events.out.tfevents.*"))
    tags = {"scalars": set(), "images": set(), "tensors": set()}
    for e in events:
        acc = EventAccumulator(str(e), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags().get(kind, []))
    assert {"val/bleu", "val/ppl", "val/loss", "test/bleu_beam"} <= tags["scalars"]
    assert "translation/attention" in tags["images"]
    assert any(t.startswith("translation/samples") for t in tags["tensors"])


def test_vocabularies_round_trip_through_the_checkpoint(trained):
    _, ckpt, _ = trained
    raw = read_checkpoint(ckpt)  # weights_only
    assert raw["fodl_text"]["settings"]["lowercase"] is True
    model = load_translator(str(ckpt))
    assert set(model.tgt_vocab.words[4:]) == set(RENAME.values())
    assert model.net.num_words == len(model.tgt_vocab)


def test_translate_cli(trained, tmp_path, monkeypatch, capsys):
    _, ckpt, _ = trained
    png = tmp_path / "att.png"
    r = run_script("translate.py", [str(ckpt), "a b c d", "j i h", "--heatmap", str(png)],
                   cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["n m l k", "r s t"]
    assert (tmp_path / "att-1.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "att-2.png").is_file()
    cli = runpy.run_path(str(ROOT / "scripts" / "translate.py"))
    monkeypatch.setattr(sys, "argv", ["translate.py", str(tmp_path / "nope.ckpt"), "x"])
    assert cli["main"]() == 2 and "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["translate.py", str(ckpt), "a b c", "--greedy"])
    assert cli["main"]() == 0 and capsys.readouterr().out.strip() == "m l k"


def test_sacrebleu_is_the_metric():
    import sacrebleu

    hyp, ref = ["a man rides a bike."], ["A man rides a red bike."]
    assert corpus_bleu(hyp, ref) == pytest.approx(
        sacrebleu.corpus_bleu(hyp, [ref], lowercase=True).score)
    assert corpus_bleu(ref, ref, lowercase=False) == pytest.approx(100.0)


@pytest.mark.parametrize("experiment", ["book/ch7_seq2seq", "fast/seq2seq"])
def test_experiments_run(tmp_path, experiment):
    root = write_multi30k(tmp_path / "data", langs=("de", "en", "fr"))
    cfg = compose_train([f"paths.data_dir={root}", *FAST, f"experiment={experiment}",
                         "model.net.embedding_dim=8", "model.net.hidden_size=8",
                         "model.net.decoder_hidden_size=8", "data.src_max_size=30",
                         "data.tgt_max_size=30", "data.min_count=1", "+trainer.fast_dev_run=true"],
                        tmp_path / "run")
    assert "test/bleu" in train(cfg)
    if experiment.startswith("book"):
        assert (cfg.data.src, cfg.data.tgt) == ("en", "fr") and cfg.model.net.num_layers == 3
        assert cfg.optimizer.lr == 0.5 and cfg.data.batch_size == 64
    else:
        assert (cfg.data.src, cfg.data.tgt) == ("de", "en") and cfg.model.net.attention == "general"


def test_net_smaller_than_the_vocabulary_is_a_clear_error(tmp_path):
    d = write_reversal_splits(tmp_path / "data", 100)
    cfg = compose_train([f"paths.data_dir={d}", *FAST, *TINY, files_opt(d), "data.tgt_max_size=null",
                         "model.net.tgt_vocab_size=8", "+trainer.fast_dev_run=true"], tmp_path / "run")
    with pytest.raises(FodlError, match="target vocabulary has 14 words but the net 8 rows"):
        train(cfg)


def test_benchmark_compare_counts_target_tokens(tmp_path):
    from fodl.benchmark import compare

    d = write_reversal_splits(tmp_path / "data", 200)
    extra = [o for o in TINY if not o.startswith("model=")] + [
        files_opt(d), "trainer.enable_model_summary=false", "+trainer.limit_train_batches=3",
        "logger=none", "callbacks=none"]
    r = compare("seq2seq_attention", str(d), epochs=2, extra=extra)
    assert r["steps"] == 3 and r["tokens"] > 3 * 32 * 3


# -- the real files ------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_multi30k_counts_and_alignment():
    counts = {}
    for split in ("train", "val", "test_2016_flickr"):
        pairs = read_aligned(shared_file("multi30k", f"{split}.de.gz"),
                             shared_file("multi30k", f"{split}.en.gz"))
        counts[split] = len(pairs)
    assert counts == {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
    assert pairs[0] == ("Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
                        "A man in an orange hat starring at something.")


# -- subwords (data.subword=bpe) -----------------------------------------------------------------
SYLLABLES = ["ka", "lo", "mi", "ten", "su"]


def syllable_pairs(n, seed=0):
    """Words of 1-3 syllables; the target is the source's words in reverse order."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
                 for _ in range(rng.randint(2, 5))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def test_bpe_codec_round_trips_words_and_survives_serialisation():
    pytest.importorskip("tokenizers")
    from fodl.text.subword import SubwordCodec

    sents = [a.split() for a, _ in syllable_pairs(300)]
    codec = SubwordCodec.train(sents, vocab_size=40)
    words = ["kalomi", "tensu", "ka", "sukaten"]
    pieces = codec.split(words)
    assert len(pieces) >= len(words) and any(p.startswith("##") for p in pieces)
    assert SubwordCodec.join(pieces) == words
    assert len(codec.tokenizer.get_vocab()) <= 40
    assert "<unk>" in codec.split(["kaz"])  # a character never seen in training
    again = SubwordCodec.from_str(codec.to_str())
    assert again.split(words) == pieces and again.split_all([words, []]) == [pieces, []]
    with pytest.raises(FodlError, match="subword_vocab_size=1"):
        SubwordCodec.train(sents, vocab_size=1)


def test_bpe_translator_trains_and_translates_from_its_checkpoint_alone(tmp_path):
    pytest.importorskip("tokenizers")
    d = tmp_path / "data"
    d.mkdir()
    for split, n, seed in (("train", 300, 0), ("val", 30, 1), ("test", 30, 2)):
        write_tsv(d / f"{split}.tsv", syllable_pairs(n, seed))
    cfg = compose_train([f"paths.data_dir={d}", *FAST, *TINY, files_opt(d), "trainer.max_epochs=2",
                         "data.subword=bpe", "data.subword_vocab_size=30", "data.src_max_size=40",
                         "data.tgt_max_size=40"], tmp_path / "run")
    metrics = train(cfg)
    assert {"test/bleu_greedy", "test/bleu_beam"} <= set(metrics)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert set(ckpt["fodl_text"]["settings"]["subword"]) == {"src", "tgt"}
    pieces = ckpt["fodl_text"]["vocabularies"]["tgt"]["words"]
    assert any(w.startswith("##") for w in pieces) and len(pieces) <= 40
    model = load_translator(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert model.source_tokens("Kalomi tensu") == model._codecs["src"].split(["kalomi", "tensu"])
    (out, _), = model.translate(["kalomi tensu ka"])
    assert out and "##" not in out  # pieces are joined back into words
    with pytest.raises(Exception, match="data.subword='wordpiece'"):
        ParallelTextDataModule(d, corpus="files", files={"train": "train.tsv"}, subword="wordpiece")


def test_bpe_without_tokenizers_says_how_to_install_it(monkeypatch):
    from fodl.text.subword import SubwordCodec

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails as if not installed
    with pytest.raises(FodlError, match=r"pip install -e '\.\[subword\]'"):
        SubwordCodec.train([["a", "b"]], vocab_size=10)

"""The text toolkit's chapter-7 parts: reserved bos/eos, numericalisation into padded tensors
with lengths, text state in checkpoints, the word/Treebank tokenizers, word2vec vectors."""

import gzip

import pytest
import torch

from conftest import write_word2vec
from fodl.errors import FodlError
from fodl.text.pad import length_mask, pad_ids
from fodl.text.state import load_text_state, store_text_state
from fodl.text.tokenize import get_tokenizer, tokenize, treebank_tokenize, word_tokenize
from fodl.text.vectors import read_word2vec
from fodl.text.vocab import BOS, EOS, PAD, UNK, Vocabulary


def _vocab():
    return Vocabulary.build("a b b c c c".split(), specials=(PAD, UNK, BOS, EOS))


def test_reserved_ids_and_encode_batch():
    v = _vocab()
    assert (v.pad_id, v.unk_id, v.bos_id, v.eos_id) == (0, 1, 2, 3)
    assert v.words[4:] == ["c", "b", "a"]
    ids, lengths = v.encode_batch([["a", "zz"], ["c", "c", "b", "a"]], bos=True, eos=True)
    assert lengths.tolist() == [4, 6]
    assert ids.tolist() == [[2, 6, 1, 3, 0, 0], [2, 4, 4, 5, 6, 3]]
    cut, lengths = v.encode_batch([["c", "c", "b", "a"]], max_len=3, eos=True)
    assert cut.tolist() == [[4, 4, 3]] and lengths.tolist() == [3]  # EOS kept last
    with pytest.raises(FodlError, match="no <bos>"):
        Vocabulary.build(["a"]).bos_id  # the skip-gram's default specials: pad, unk


def test_pad_ids_and_mask():
    ids, lengths = pad_ids([[5, 6, 7], [], [8]], pad_id=0, max_len=2)
    assert ids.tolist() == [[5, 6], [0, 0], [8, 0]] and lengths.tolist() == [2, 0, 1]
    assert length_mask(lengths).tolist() == [[True, True], [False, False], [True, False]]
    with pytest.raises(FodlError, match="max_len"):
        pad_ids([[1]], max_len=0)


def test_text_state_survives_a_weights_only_checkpoint(tmp_path):
    v = _vocab()
    ckpt = {"state_dict": {}}
    store_text_state(ckpt, {"words": v}, {"tokenizer": "words", "max_len": 7})
    torch.save(ckpt, tmp_path / "c.ckpt")
    back = torch.load(tmp_path / "c.ckpt", weights_only=True)  # plain containers only
    vocabs, settings = load_text_state(back)
    assert vocabs["words"].words == v.words and vocabs["words"].counts == v.counts
    assert vocabs["words"].bos_id == 2 and settings == {"tokenizer": "words", "max_len": 7}
    with pytest.raises(FodlError, match="holds no vocabulary"):
        load_text_state({"state_dict": {}})


def test_tokenizers():
    assert tokenize("Don't <br />stop") == ["don", "t", "br", "stop"]  # the skip-gram's, unchanged
    assert word_tokenize("Great!!<br />10/10, don't miss it.") == [
        "great", "!", "!", "10/10", ",", "don't", "miss", "it", "."]
    assert treebank_tokenize("The woman, after grabbing her umbrella, went to the bank.") == [
        "The", "woman", ",", "after", "grabbing", "her", "umbrella", ",", "went", "to", "the",
        "bank", "."]
    assert treebank_tokenize('I don\'t like John\'s "U.S. unit" of Acme Corp. in 1,000 cases.') == [
        "I", "do", "n't", "like", "John", "'s", "``", "U.S.", "unit", "''", "of", "Acme", "Corp.",
        "in", "1,000", "cases", "."]
    assert get_tokenizer("words") is word_tokenize
    with pytest.raises(FodlError, match="Unknown tokenizer"):
        get_tokenizer("bpe")


@pytest.mark.parametrize("binary", [False, True])
def test_word2vec_round_trip(tmp_path, binary):
    words = ["the", "Bank", "café"]
    vec = torch.randn(3, 5)
    path = write_word2vec(tmp_path / ("v.bin" if binary else "v.txt"), words, vec, binary=binary)
    w, v = read_word2vec(path)
    assert w == words and torch.allclose(v, vec, atol=1e-6)
    w, v = read_word2vec(path, wanted={"Bank"})
    assert w == ["Bank"] and torch.allclose(v[0], vec[1], atol=1e-6)
    # sniffed without the suffix, and through gzip
    other = tmp_path / "vectors.dat"
    other.write_bytes(path.read_bytes())
    assert read_word2vec(other)[0] == words
    gz = tmp_path / "vectors.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_word2vec(gz)[0] == words


def test_word2vec_files_written_by_gensim(tmp_path):
    gensim = pytest.importorskip("gensim")
    kv = gensim.models.KeyedVectors(4)
    vec = torch.randn(3, 4)
    kv.add_vectors(["the", "Bank", "café"], vec.numpy())
    for binary in (False, True):
        p = tmp_path / f"g{int(binary)}"
        kv.save_word2vec_format(str(p), binary=binary)
        w, v = read_word2vec(p)
        assert w == ["the", "Bank", "café"] and torch.allclose(v, vec, atol=1e-5)
    ours = write_word2vec(tmp_path / "ours.bin", ["x", "y"], torch.ones(2, 4), binary=True)
    assert gensim.models.KeyedVectors.load_word2vec_format(str(ours), binary=True)["y"].sum() == 4


def test_glove_text_without_header_and_errors(tmp_path):
    p = tmp_path / "glove.txt"
    p.write_text("the 0.1 0.2\nbank 0.3 0.4\n")
    w, v = read_word2vec(p)
    assert w == ["the", "bank"] and v.shape == (2, 2)
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\nthe 0.1 0.2 0.3\nbank 0.3 0.4\n")
    with pytest.raises(FodlError, match=r"bad.txt, line 3: expected a word and 3 numbers"):
        read_word2vec(bad)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(b"2 4\nthe " + b"\0" * 16 + b"\nbank " + b"\0" * 5)
    with pytest.raises(FodlError, match="truncated"):
        read_word2vec(cut, binary=True)
    with pytest.raises(FodlError, match="do not exist"):
        read_word2vec(tmp_path / "missing.bin")

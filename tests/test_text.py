"""The text toolkit: tokenisation, vocabulary, corpus readers, with their error messages."""

import gzip
import io
import tarfile
import zipfile

import pytest
import torch

from conftest import shared_file
from fodl.errors import FodlError
from fodl.text import UNK, Vocabulary, encode_corpus, iter_documents, tokenize
from fodl.text import corpus as corpus_mod

# -- tokenisation ------------------------------------------------------------------------


def test_tokenize_is_lowercase_letter_runs():
    assert tokenize("The boy went to the Bank.") == ["the", "boy", "went", "to", "the", "bank"]
    assert tokenize("Don't stop: 42 km/h, café_au_lait") == ["don", "t", "stop", "km", "h", "café", "au", "lait"]
    assert tokenize("Keep Case", lowercase=False) == ["Keep", "Case"]
    text8_like = "anarchism originated as a term of abuse"
    assert tokenize(text8_like) == text8_like.split()  # text8 is left as it is


def test_tokenize_strips_html_tags_only_when_asked():
    review = "Great film.<br /><br />See it"
    assert tokenize(review) == ["great", "film", "br", "br", "see", "it"]
    assert tokenize(review, strip_html=True) == ["great", "film", "see", "it"]


# -- vocabulary --------------------------------------------------------------------------


def test_vocabulary_order_min_count_max_size_and_unk_count():
    toks = "b a c a b a d".split()  # a:3 b:2 c:1 d:1 (c seen before d)
    v = Vocabulary.build(toks)
    assert v.words == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert v.counts == [0, 0, 3, 2, 1, 1]
    v = Vocabulary.build(toks, min_count=2)
    assert v.words == ["<pad>", "<unk>", "a", "b"] and v.counts[1] == 2  # c and d left out
    v = Vocabulary.build(toks, max_size=4)
    assert v.words == ["<pad>", "<unk>", "a", "b"]
    assert v.encode(["a", "zzz", "b"]).tolist() == [2, 1, 3]
    assert v.decode([2, 3]) == ["a", "b"] and "a" in v and v["zzz"] == v.unk_id == 1


def test_vocabulary_without_specials_marks_unknown_words():
    v = Vocabulary.build("x y x".split(), specials=(), unk=None)
    assert v.words == ["x", "y"] and v.encode(["y", "q"]).tolist() == [1, -1]


def test_vocabulary_round_trips_through_a_weights_only_checkpoint(tmp_path):
    v = Vocabulary.build("the cat sat on the mat".split(), specials=(UNK,), unk=UNK)
    torch.save({"vocabulary": v.to_dict()}, tmp_path / "v.pt")
    back = Vocabulary.from_dict(torch.load(tmp_path / "v.pt", weights_only=True)["vocabulary"])
    assert back.words == v.words and back.counts == v.counts and back.unk_id == v.unk_id == 0


def test_vocabulary_edge_cases_are_clear_errors():
    with pytest.raises(FodlError, match="holds no words"):
        Vocabulary.build([], source="Corpus empty.txt")
    with pytest.raises(FodlError, match=r"min_count=5 times \(the most frequent occurs 2 times\)"):
        Vocabulary.build("a a b".split(), min_count=5)
    with pytest.raises(FodlError, match="no room"):
        Vocabulary.build("a b".split(), max_size=2)
    with pytest.raises(FodlError, match="reserved"):
        Vocabulary.build(["<unk>", "a"])
    with pytest.raises(FodlError, match="malformed"):
        Vocabulary.from_dict({"counts": []})


# -- corpus readers ----------------------------------------------------------------------


def _tar_gz(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_readers_plain_folder_gz_zip_and_tar_in_place(tmp_path):
    (tmp_path / "plain.txt").write_text("one two\n\nthree\n")
    assert list(iter_documents(tmp_path / "plain.txt")) == ["one two", "three"]  # blank lines skipped

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee")
    (folder / "sub" / "a.txt").write_text("ay")
    (folder / "README").write_text("not text")
    assert list(iter_documents(folder, members=["*.txt"])) == ["bee", "ay"]  # sorted walk
    assert len(list(iter_documents(folder))) == 3  # members=None: every file

    (tmp_path / "c.en.gz").write_bytes(gzip.compress(b"a caption\nanother one\n"))
    assert list(iter_documents(tmp_path / "c.en.gz")) == ["a caption", "another one"]

    with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
        z.writestr("text8", " anarchism originated as a term")
    assert list(iter_documents(tmp_path / "text8.zip")) == [" anarchism originated as a term"]

    imdb = _tar_gz(tmp_path / "aclImdb.tar.gz", {
        "aclImdb/README": b"readme",
        "aclImdb/train/pos/0_9.txt": b"Loved it.<br />Really",
        "aclImdb/train/neg/1_2.txt": b"Hated it",
        "aclImdb/train/urls_pos.txt": b"http://x",
    })
    docs = list(iter_documents(imdb, members=["*/pos/*.txt", "*/neg/*.txt"]))
    assert docs == ["Loved it.<br />Really", "Hated it"]
    assert list(iter_documents(imdb, members=["*/pos/*.txt", "*/neg/*.txt"], max_documents=1)) == docs[:1]


def test_encode_corpus_one_int_tensor_ranked_by_count(tmp_path):
    (tmp_path / "c.txt").write_text("b a c\na b a\n")
    enc = encode_corpus(tmp_path / "c.txt")
    assert enc["words"] == ["a", "b", "c"] and enc["counts"].tolist() == [3, 2, 1]
    assert enc["ids"].dtype == torch.int32 and enc["ids"].tolist() == [1, 0, 2, 0, 1, 0]
    assert enc["doc_lengths"].tolist() == [3, 3]


def test_a_long_line_is_tokenised_in_pieces_without_splitting_words(tmp_path, monkeypatch):
    words = ["w" + "x" * (i % 7) for i in range(2000)]
    (tmp_path / "long.txt").write_text(" ".join(words))
    monkeypatch.setattr(corpus_mod, "PIECE", 64)
    pieces = list(corpus_mod._pieces(" ".join(words), 64))
    assert len(pieces) > 100 and "".join(pieces) == " ".join(words)
    enc = encode_corpus(tmp_path / "long.txt")
    assert [enc["words"][i] for i in enc["ids"].tolist()] == words


def test_corpus_errors_name_the_file_line_and_fix(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    enc = encode_corpus(tmp_path / "empty.txt")
    with pytest.raises(FodlError, match="empty.txt holds no words"):
        Vocabulary.from_counts(enc["words"], enc["counts"], source=str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("fine line\nna\xefve caf\xe9\n".encode("latin-1"))
    with pytest.raises(FodlError, match=r"latin1.txt, line 2 \(byte 12\).*not valid utf-8.*iconv"):
        encode_corpus(tmp_path / "latin1.txt")
    assert encode_corpus(tmp_path / "latin1.txt", encoding="latin-1")["words"][-1] == "café"
    assert "caf" in encode_corpus(tmp_path / "latin1.txt", errors="replace")["words"]
    with pytest.raises(FodlError, match="does not exist"):
        encode_corpus(tmp_path / "nope.txt")
    with pytest.raises(FodlError, match="no file matching"):
        encode_corpus(tmp_path, members=["*.md"])
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(FodlError, match="not a readable gzip"):
        encode_corpus(tmp_path / "bad.gz")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FodlError, match="truncated or corrupt"):
        encode_corpus(tmp_path / "bad.zip")


# -- real data ---------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_multi30k_and_imdb_read_in_place():
    docs = list(iter_documents(shared_file("multi30k", "train.en.gz")))
    assert len(docs) == 29000 and docs[0].startswith("Two young, White males are outside")
    imdb = shared_file("imdb", "aclImdb_labelled_50k.tar.gz")
    enc = encode_corpus(imdb, members=["*/pos/*.txt", "*/neg/*.txt"], strip_html=True,
                        max_documents=300)
    assert len(enc["doc_lengths"]) == 300 and enc["words"][0] == "the"
    assert "br" not in enc["words"][:200]  # the <br /> tags are gone

"""The text toolkit every text model shares: tokenisation, vocabulary, corpus readers."""

from fodl.text.corpus import encode_corpus, iter_documents, iter_sources
from fodl.text.tokenize import tokenize
from fodl.text.vocab import PAD, UNK, Vocabulary

__all__ = ["PAD", "UNK", "Vocabulary", "encode_corpus", "iter_documents", "iter_sources", "tokenize"]

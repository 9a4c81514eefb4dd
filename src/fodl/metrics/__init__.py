"""Training-time metrics: what a model family computes while it trains and evaluates (analogy
accuracy of word vectors, tagging scores). Plain torch, below ``fodl.models`` and usable by
``fodl.data`` (which reads the analogy questions); the offline studies stay in ``fodl.analysis``."""

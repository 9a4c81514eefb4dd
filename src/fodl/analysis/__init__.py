"""The book's analyses, run on fodl's logs and checkpoints."""

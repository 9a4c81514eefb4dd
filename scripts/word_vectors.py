#!/usr/bin/env python
"""Word vectors of a skip-gram checkpoint (book chapter 6).

    python scripts/word_vectors.py neighbours CKPT movie good king        # book's printout
    python scripts/word_vectors.py analogy CKPT man king woman            # man : king :: woman : ?
    python scripts/word_vectors.py evaluate CKPT [--questions questions-words.txt]
    python scripts/word_vectors.py projector CKPT [--out DIR] [--n 10000] # TensorBoard projector
    python scripts/word_vectors.py tsne CKPT [--out tsne.png] [--n 500]   # book figure 6-22

CKPT: e.g. outputs/skipgram/runs/<time>/checkpoints/last.ckpt. Outputs go next to the run by
default. t-SNE needs scikit-learn (pip install -e ".[analysis]").
"""

import argparse
import sys
from pathlib import Path

from fodl.analysis.word_vectors import (
    analogy,
    export_projector,
    load_word_vectors,
    neighbours,
    tsne_plot,
)
from fodl.config import default_data_dir
from fodl.errors import reports_errors
from fodl.metrics.analogy import (
    encode_analogies,
    evaluate_analogies,
    format_analogies,
    read_analogies,
)


@reports_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("neighbours", help="nearest neighbours (cosine) of words")
    p.add_argument("ckpt")
    p.add_argument("words", nargs="+")
    p.add_argument("--k", type=int, default=8)
    p = sub.add_parser("analogy", help="a : b :: c : ? (3CosAdd)")
    p.add_argument("ckpt")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("c")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--restrict", type=int, default=30000)
    p = sub.add_parser("evaluate", help="Google analogy accuracy per section and in total")
    p.add_argument("ckpt")
    p.add_argument("--questions", default=str(Path(default_data_dir()) / "word2vec" / "questions-words.txt"))
    p.add_argument("--restrict", type=int, default=30000)
    p = sub.add_parser("projector", help="export for TensorBoard's projector, with word labels")
    p.add_argument("ckpt")
    p.add_argument("--out", default=None, help="default: <run dir>/projector")
    p.add_argument("--n", type=int, default=10000, help="most frequent words to export")
    p = sub.add_parser("tsne", help="t-SNE PNG of the most frequent words (book figure 6-22)")
    p.add_argument("ckpt")
    p.add_argument("--out", default=None, help="default: <run dir>/tsne_words.png")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run_dir = Path(args.ckpt).resolve().parent.parent

    vectors, vocab = load_word_vectors(args.ckpt)
    if args.cmd == "neighbours":
        print("\n".join(neighbours(vectors, vocab, [w.lower() for w in args.words], args.k)))
    elif args.cmd == "analogy":
        for word, sim in analogy(vectors, vocab, args.a.lower(), args.b.lower(), args.c.lower(),
                                 args.k, args.restrict):
            print(f"{word}\t{sim:.3f}")
    elif args.cmd == "evaluate":
        aset = encode_analogies(read_analogies(args.questions), vocab.words, args.restrict,
                                skip=vocab.num_specials)
        print(format_analogies(evaluate_analogies(vectors, aset)))
    elif args.cmd == "projector":
        out = export_projector(vectors, vocab, args.out or run_dir / "projector", args.n)
        print(f"wrote {out}; view with: tensorboard --logdir {out}  (PROJECTOR tab)")
    else:
        print(f"wrote {tsne_plot(vectors, vocab, args.out or run_dir / 'tsne_words.png', args.n, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

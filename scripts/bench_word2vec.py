#!/usr/bin/env python
"""fodl's skip-gram beside gensim's Word2Vec(sg=1): same corpus file, same settings, one run.

    python scripts/bench_word2vec.py                           # IMDB reviews, 5 epochs, 2 threads
    python scripts/bench_word2vec.py --max-documents 20000 --epochs 1
    python scripts/bench_word2vec.py --corpus /path/to/text8 --members '*'
    python scripts/bench_word2vec.py -- optimizer.lr=0.3       # extra overrides for the fodl run

Tokenises the corpus once with fodl's toolkit into a plain-text file (one document per line),
trains gensim and fodl on it with the same dimension, window, negatives, min_count, vocabulary
size, subsampling, epochs and threads, and prints words/s and Google analogy accuracy (per
section and total, among the 30,000 most frequent words) for each. Needs gensim
(pip install -e ".[bench]"). Reads --data-dir (default: $FODL_DATA_DIR, else ../shared/data).

OpenMP's threads spin while they wait for work; on a machine shared with other jobs that makes
PyTorch's small kernels many times slower, so this script sets OMP_WAIT_POLICY=PASSIVE (unless
it is set already): threads sleep instead, as gensim's worker threads do.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from fodl.analysis.word2vec_bench import (  # noqa: E402
    Settings,
    format_results,
    run_fodl,
    run_gensim,
    write_token_file,
)
from fodl.config import default_data_dir  # noqa: E402
from fodl.errors import FodlError, reports_errors  # noqa: E402


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--corpus", default=None, help="default: <data-dir>/imdb/aclImdb_labelled_50k.tar.gz")
    ap.add_argument("--members", nargs="*", default=None,
                    help="files to read in a folder/archive (default for IMDB: */pos/*.txt */neg/*.txt)")
    ap.add_argument("--max-documents", type=int, default=None, help="a prefix of the corpus")
    ap.add_argument("--questions", default=None, help="default: <data-dir>/word2vec/questions-words.txt")
    ap.add_argument("--restrict", type=int, default=30000)
    ap.add_argument("--work-dir", default=None, help="where the token file goes (default: a cache dir)")
    ap.add_argument("--gensim-input", default="iterable", choices=["iterable", "corpus_file"])
    ap.add_argument("--skip-gensim", action="store_true")
    ap.add_argument("--skip-fodl", action="store_true")
    for name, default in vars(Settings()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    ap.add_argument("--metrics-json", help="also write gensim's analogy accuracy "
                    "(test/analogy_acc, as fodl's skipgram reports it) here; needs --skip-fodl")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the fodl run")
    args = ap.parse_args()
    if args.metrics_json and (args.skip_gensim or not args.skip_fodl):
        raise FodlError("scripts/bench_word2vec.py --metrics-json records gensim's run (the "
                        "results pipeline's peer row): give --skip-fodl and not --skip-gensim.")
    s = Settings(**{k: getattr(args, k) for k in vars(Settings())})
    data = Path(args.data_dir)
    imdb = args.corpus is None
    corpus = Path(args.corpus) if args.corpus else data / "imdb" / "aclImdb_labelled_50k.tar.gz"
    members = args.members if args.members is not None else (["*/pos/*.txt", "*/neg/*.txt"] if imdb else None)
    questions = Path(args.questions) if args.questions else data / "word2vec" / "questions-words.txt"
    work = Path(args.work_dir or os.environ.get("FODL_CACHE_DIR") or Path.home() / ".cache" / "fodl")
    token_file = work / f"w2v-{corpus.name}-{args.max_documents or 'all'}.txt"
    if not token_file.exists():
        write_token_file(corpus, token_file, members, strip_html=imdb, max_documents=args.max_documents)
    tokens = sum(len(line.split()) for line in open(token_file, encoding="utf-8"))
    print(f"token file {token_file} ({tokens:,} tokens)", flush=True)
    results = []
    if not args.skip_gensim:
        results.append(run_gensim(token_file, s, questions, args.restrict, args.gensim_input))
        print(f"{results[-1].name}: {results[-1].train_s:.1f} s", flush=True)
        if args.metrics_json:
            from fodl.train import write_metrics

            r = results[-1]
            write_metrics(args.metrics_json, {"test/analogy_acc": r.analogy["total"],
                                              "train_s": r.train_s, "words_per_s": r.words_per_s})
    if not args.skip_fodl:
        results.append(run_fodl(token_file, s, questions, args.restrict, args.overrides))
        print(f"{results[-1].name}: {results[-1].train_s:.1f} s", flush=True)
    print()
    print(format_results(results, s, tokens, args.restrict))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Tag a sentence with a trained POS tagger: python scripts/tag.py CKPT "any sentence" ["another" ...]

Prints word/TAG pairs, one sentence per line. The checkpoint (model=pos_tagger) holds the
vocabularies and window settings; nothing else is read. The sentence is split into Penn
Treebank tokens (``do n't``, ``John 's``, punctuation apart) as CoNLL-2000 is.
"""

import argparse
import sys

from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="a pos_tagger checkpoint (outputs/pos_tagger/runs/<time>/checkpoints/*.ckpt)")
    ap.add_argument("sentences", nargs="+", help="raw sentences to tag")
    args = ap.parse_args()
    from fodl.models.tagger import load_tagger

    tagger = load_tagger(args.ckpt)
    for s in args.sentences:
        print(" ".join(f"{w}/{t}" for w, t in tagger.tag_text(s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

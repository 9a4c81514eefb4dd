#!/usr/bin/env python
"""Translate sentences with a trained seq2seq model: python scripts/translate.py CKPT "ein Mann fährt Fahrrad ." ["..." ...]

Prints one translation per line. The checkpoint (model=seq2seq_attention) holds both
vocabularies and the tokenisation settings; nothing else is read. Beam search by default
(the checkpoint's beam size and length penalty); --greedy for greedy decoding. --heatmap PNG
writes the attention matrix of each sentence (PNG, or PNG with -1, -2 ... for several).
"""

import argparse
import sys
from pathlib import Path

from fodl.errors import FodlError, reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="a seq2seq_attention checkpoint (outputs/seq2seq_attention/runs/<time>/checkpoints/*.ckpt)")
    ap.add_argument("sentences", nargs="+", help="raw source-language sentences")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    ap.add_argument("--beam-size", type=int, default=None, help="beam size (default: the checkpoint's)")
    ap.add_argument("--length-penalty", type=float, default=None, help="GNMT alpha (default: the checkpoint's)")
    ap.add_argument("--heatmap", metavar="PNG", default=None, help="write the attention matrix as a PNG")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from fodl.models.seq2seq import attention_figure, load_translator

    model = load_translator(args.ckpt)
    if args.beam_size is not None:
        if args.beam_size < 1:
            raise FodlError(f"--beam-size {args.beam_size}: give at least 1.")
        model.beam_size = args.beam_size
    if args.length_penalty is not None:
        model.length_penalty = args.length_penalty
    out = model.translate(args.sentences, beam=not args.greedy, attention=bool(args.heatmap))
    for text, _ in out:
        print(text)
    if args.heatmap:
        if out[0][1] is None:
            raise FodlError("This model has no attention (model.net.attention=none): there is "
                            "no heatmap to draw.")
        import matplotlib.pyplot as plt

        path = Path(args.heatmap)
        for i, (sentence, (_, weights)) in enumerate(zip(args.sentences, out)):
            words = model.tgt_vocab.decode(model.last_decoded.tokens[i]) + ["<eos>"]
            fig = attention_figure(weights, model.source_tokens(sentence) + ["<eos>"], words)
            dest = path if len(out) == 1 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
            fig.savefig(dest, dpi=100)
            plt.close(fig)
            print(f"attention heatmap: {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Copy-task generalisation (book chapter 8): bit error of copy-task checkpoints on lengths
1 .. 4x their training maximum, on identical sequences for every model.

    python scripts/dnc_generalisation.py DNC=outputs/dnc/runs/<time>/checkpoints/<best>.ckpt \
        LSTM=outputs/dnc_lstm_baseline/runs/<time>/checkpoints/<best>.ckpt \
        [--out DIR] [--sequences 64] [--factors 1 2 3 4]

Prints a markdown table (bit error at 1x, 2x, 3x, 4x the training maximum) and writes
generalisation.png (bit error vs length, all models on one figure) and generalisation.json.
"""

import argparse
import json
import sys
from pathlib import Path

from fodl.analysis.dnc import generalisation, generalisation_table, plot_generalisation
from fodl.errors import reports_errors


@reports_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="LABEL=path/to.ckpt (or a path: labelled by its model)")
    p.add_argument("--out", type=Path, default=Path("outputs/dnc_generalisation"))
    p.add_argument("--sequences", type=int, default=64, help="random sequences per length")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 3, 4])
    args = p.parse_args(argv)
    ckpts = {}
    for i, item in enumerate(args.checkpoints):
        label, sep, path = item.partition("=")
        ckpts[label if sep else f"model {i + 1}"] = path if sep else item
    result = generalisation(ckpts, tuple(args.factors), args.sequences)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generalisation.json").write_text(json.dumps(result, indent=1))
    plot_generalisation(result, args.out / "generalisation.png")
    print(generalisation_table(result))
    print(f"\nwritten: {args.out / 'generalisation.png'}, {args.out / 'generalisation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

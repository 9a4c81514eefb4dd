#!/usr/bin/env python
"""Training cost and validation error of several runs in one PNG (e.g. book figure 5-17,
CIFAR-10 with and without batch normalisation), plus a markdown table.

    python scripts/compare_runs.py outputs/cifar_cnn/runs/<t1> outputs/cifar_cnn_bn/runs/<t2> \\
        --out outputs/figures/cifar_bn.png --title "CIFAR-10: batch norm vs none"
"""

import argparse
import sys
from pathlib import Path

from fodl.analysis.compare import plot, table
from fodl.analysis.tblogs import read_run
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (with metrics.json and tensorboard/)")
    ap.add_argument("--out", default="outputs/figures/compare.png")
    ap.add_argument("--title", default="Training curves")
    args = ap.parse_args()
    runs = [read_run(Path(r)) for r in args.runs]
    out = Path(args.out)
    plot(runs, out, title=args.title)
    md = table(runs)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

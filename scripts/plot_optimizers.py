#!/usr/bin/env python
"""Compare the optimizers of a chapter 4 sweep: a PNG of training cost and validation error,
and a markdown table of final test accuracy.

    python scripts/train.py experiment=book/ch4_optimizers     # the sweep
    python scripts/plot_optimizers.py [SWEEP_DIR] [--out DIR]  # default: latest sweep
"""

import argparse
import sys
from pathlib import Path

from fodl.analysis.compare import plot, table
from fodl.analysis.tblogs import latest, read_sweep
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", nargs="?", help="default: newest dir under outputs/ch4_optimizers")
    ap.add_argument("--out", help="where to write optimizers.png / optimizers.md (default: the sweep dir)")
    args = ap.parse_args()
    sweep = Path(args.sweep_dir) if args.sweep_dir else latest(Path("outputs/ch4_optimizers"))
    runs = read_sweep(sweep)
    out = Path(args.out) if args.out else sweep
    png = plot(runs, out / "optimizers.png")
    md = table(runs)
    (out / "optimizers.md").write_text(md)
    print(md)
    print(f"wrote {png} and {out / 'optimizers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

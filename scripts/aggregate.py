#!/usr/bin/env python
"""Mean +- std and n of every final metric of a sweep, grouped by the swept overrides other
than the seed; failed jobs listed with their error.

    python scripts/train.py -m seed=1,2,3 optimizer=sgd,adam trainer.max_epochs=10
    python scripts/aggregate.py outputs/multiruns/<time>     # -> aggregate.md, aggregate.csv

Exit status: 0 when every job completed, 1 when some failed or have no result, 2 on bad input.
"""

import argparse
import sys

from fodl.analysis.aggregate import report
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/multiruns/<time>")
    ap.add_argument("--exclude", nargs="*", default=["seed"],
                    help="override keys pooled rather than grouped by (default: seed)")
    ap.add_argument("--out", default=None, help="where to write aggregate.md/.csv (default: SWEEP_DIR)")
    args = ap.parse_args()
    rep = report(args.sweep_dir, exclude=args.exclude)
    md, cs = rep.write(args.out)
    print(rep.markdown())
    print(f"wrote {md} and {cs}")
    return 0 if all(j.status == "completed" for j in rep.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())

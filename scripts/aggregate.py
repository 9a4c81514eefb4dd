#!/usr/bin/env python
"""Mean +- std and n of every final metric of a sweep, grouped by the swept overrides other
than the seed; failed jobs listed with their error.

    python scripts/train.py -m seed=1,2,3 optimizer=sgd,adam trainer.max_epochs=10
    python scripts/aggregate.py outputs/multiruns/<time>     # -> aggregate.md, aggregate.csv

The same from MLflow (a sweep run with logger=mlflow or logger=many: its jobs carry the tag
sweep=multiruns/<time>), e.g. on another machine than the one that ran it:

    python scripts/aggregate.py --mlflow http://host:5000 multiruns/<time>   # -> outputs/multiruns/<time>/
    python scripts/aggregate.py --mlflow sqlite:///outputs/mlruns/mlflow.db multiruns/<time>

Exit status: 0 when every job completed, 1 when some failed or have no result, 2 on bad input.
"""

import argparse
import sys
from pathlib import Path

from fodl.analysis.aggregate import Report, aggregate, report, swept_keys
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/multiruns/<time>; with "
                    "--mlflow, the sweep's tag (its directory under outputs/, e.g. multiruns/<time>)")
    ap.add_argument("--mlflow", metavar="TRACKING_URI", default=None,
                    help="read the jobs from this MLflow store (default --out: outputs/SWEEP)")
    ap.add_argument("--exclude", nargs="*", default=["seed"],
                    help="override keys pooled rather than grouped by (default: seed)")
    ap.add_argument("--out", default=None, help="where to write aggregate.md/.csv (default: SWEEP_DIR)")
    args = ap.parse_args()
    if args.mlflow:
        from fodl.analysis.tracked import mlflow_jobs

        jobs = mlflow_jobs(args.mlflow, args.sweep_dir)
        by = swept_keys(jobs, args.exclude)
        rep = Report(Path(args.sweep_dir), jobs, by, aggregate(jobs, by))
        md, cs = rep.write(args.out or Path("outputs") / args.sweep_dir)
    else:
        rep = report(args.sweep_dir, exclude=args.exclude)
        md, cs = rep.write(args.out)
    print(rep.markdown())
    print(f"wrote {md} and {cs}")
    return 0 if all(j.status == "completed" for j in rep.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())

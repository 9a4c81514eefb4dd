#!/usr/bin/env python
"""Make the registry's runs that are missing and write docs/results.md from them.

    python scripts/reproduce.py --cpu-minutes 10          # every CPU entry of <= 10 min a seed
    python scripts/reproduce.py --chapter 6               # chapter 6's CPU entries
    python scripts/reproduce.py --only ch3_logreg         # one entry (repeat --only for more)
    python scripts/reproduce.py --gpu --cpu-minutes 0     # only the GPU entries (needs a GPU)
    python scripts/reproduce.py --list                    # what is selected, and its state
    python scripts/reproduce.py --report                  # only rewrite docs/results.md
    python scripts/reproduce.py --smoke --only ch3_mnist_mlp_fast   # a few batches each
    python scripts/reproduce.py --import /path/to/fodl-runs/reproduce  # runs made elsewhere

Registry: conf/reproduce.yaml. Runs: outputs/reproduce/<id>/seed<k>/ (resumable: finished
runs are skipped, interrupted ones continue from their last.ckpt). Every finished run is also
recorded in the run ledger results/runs/<id>/seed<k>.json (committed: the report is written
from it and from the runs under --out, so results survive the loss of outputs/; a seed it holds
is not run again unless --rerun). --import DIR records the finished runs of run directories
made on another machine (e.g. a GPU's --out tree) and rewrites the report. Exit status 1 when a
run failed (the others still ran), 2 for bad options.
"""

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from fodl.errors import FodlError, reports_errors
from fodl.results import ledger, registry, report, runner
from fodl.results.runs import REPO, inspect, running


@reports_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="ID",
                    help="an entry id (repeat, or comma-separate, for more)")
    ap.add_argument("--chapter", action="append", type=int, default=[], help="a book chapter (repeatable)")
    ap.add_argument("--seeds", default=None, metavar="K,K",
                    help="only these of each selected entry's seeds (e.g. 0 on a short GPU loan)")
    ap.add_argument("--cpu-minutes", type=float, default=None,
                    help="CPU entries estimated at most this many minutes a seed (default: all)")
    ap.add_argument("--gpu", action="store_true", help="include the GPU entries (needs a GPU)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--smoke", action="store_true",
                    help="each selected entry's first seed for a few batches (outputs/reproduce-smoke/)")
    ap.add_argument("--report", action="store_true", help="only write docs/results.md from the runs")
    ap.add_argument("--list", action="store_true", help="list the selected entries and their runs")
    ap.add_argument("--import", dest="import_dirs", action="append", default=[], metavar="DIR",
                    help="record the finished runs under DIR (another machine's --out) in the "
                         "ledger, then rewrite the report (repeatable)")
    ap.add_argument("--commit", default=None,
                    help="with --import: the fodl commit the imported runs were made from, recorded "
                         "instead of what they read themselves (a copy of the code on another "
                         "machine reports 'unknown' or a stale commit)")
    ap.add_argument("--rerun", action="store_true",
                    help="run the selected seeds again even when finished (old run directories "
                         "are moved aside to seed<k>.rerun-<n>; each new run replaces its record)")
    ap.add_argument("--ledger", default=str(ledger.LEDGER),
                    help="the run ledger directory (default results/runs; '' for none)")
    ap.add_argument("--registry", default=str(registry.REGISTRY))
    ap.add_argument("--out", default=os.path.join(os.environ.get("FODL_ROOT", "."), "outputs", "reproduce"),
                    help="where the runs live (default outputs/reproduce)")
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where results.md is written")
    ap.add_argument("--readme", default=str(REPO / "README.md"),
                    help="README whose headline table is rewritten ('' or none: no README)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise FodlError(f"--jobs {args.jobs}: give 1 or more runs at a time.")

    if args.commit is not None and not args.import_dirs:
        raise FodlError("--commit goes with --import DIR (the commit the imported runs were made "
                        "from).")
    reg = registry.load(args.registry)
    only = [i for o in args.only for i in o.split(",") if i]
    out = Path(args.out)
    ledger_dir = Path(args.ledger) if args.ledger else None

    def write_report() -> None:
        if args.smoke:
            return
        # the registry as it is now: a run of hours must not write the tables of the registry it
        # started with over those of entries added or changed meanwhile
        now, why = registry.try_load(args.registry)
        if now is None:
            print(f"The report was not written: {why} Fix it, then: python scripts/reproduce.py --report",
                  file=sys.stderr)
            return
        for p in report.write(now, out, args.docs, args.readme if args.readme not in ('', 'none') else None, ledger_dir):
            print(f"wrote {p}")

    if args.import_dirs:
        if ledger_dir is None:
            raise FodlError("--import records runs in the ledger: give --ledger a directory "
                            "(default results/runs).")
        for src in args.import_dirs:
            done = ledger.import_runs(reg, src, ledger_dir, args.commit)
            for i in done:
                what = f"{i.entry_id} seed {i.seed}" if i.entry_id else "?"
                print(f"{i.action:9s} {what}: {i.path}" + (f" ({i.why})" if i.why else ""))
            counts = {a: sum(i.action == a for i in done)
                      for a in ("added", "replaced", "unchanged", "kept", "skipped")}
            print(f"{src}: " + ", ".join(f"{n} {a}" for a, n in counts.items()) + f" -> {ledger_dir}")
        write_report()
        return 0
    if args.report:
        write_report()
        return 0
    entries = registry.select(reg, only, args.chapter, args.cpu_minutes, args.gpu)
    if args.seeds is not None:
        try:
            wanted = {int(k) for k in args.seeds.split(",") if k.strip()}
        except ValueError:
            raise FodlError(f"--seeds {args.seeds}: give seed numbers separated by commas, e.g. "
                            "--seeds 0,1.") from None
        entries = [e for e in (replace(e, seeds=tuple(k for k in e.seeds if k in wanted))
                               for e in entries) if e.seeds]
    if not entries:
        raise FodlError("No registry entry matches these options (GPU entries need --gpu; "
                        "--cpu-minutes keeps entries of at most that many minutes a seed). "
                        "See `python scripts/reproduce.py --list`.")
    if args.list:
        for e in entries:
            states = ", ".join(f"seed {s}: {_state(out, ledger_dir, e, s)}" for s in e.seeds)
            cost = f"{e.device} {e.minutes:g} min" if e.minutes else e.device
            print(f"{e.id:32s} ch{e.chapter} {cost:>12s}  {states}")
        return 0
    if args.gpu and any(e.device == "gpu" for e in entries):
        import torch

        if not torch.cuda.is_available():
            raise FodlError("--gpu selects GPU entries but no CUDA GPU is visible here. Run on a "
                            "machine with one, or drop --gpu.")
    root = out.with_name(out.name + "-smoke") if args.smoke else out
    jobs, done = runner.plan(entries, root, smoke=args.smoke, ledger_dir=ledger_dir, rerun=args.rerun)
    outcomes = runner.run_all(jobs, done, smoke=args.smoke, workers=args.jobs, ledger_dir=ledger_dir)
    failed = [o for o in outcomes if not o.ok and not o.skipped and not o.stopped]
    skipped = [o for o in outcomes if o.skipped]
    stopped = [o for o in outcomes if o.stopped]
    print(f"{len(outcomes) - len(failed) - len(skipped) - len(stopped)} run(s) finished, "
          f"{len(failed)} failed, {done} already there"
          + (f", {len(skipped)} left to the process running them" if skipped else ""))
    for o in failed:
        print(f"  FAILED {o.job.entry.id} seed {o.job.seed}: {o.error} (log: {o.job.path / runner.LOG})")
    write_report()
    if (signum := runner.stopped_by()) is not None:
        print(f"stopped by {signal.Signals(signum).name}: {len(stopped)} run(s) not finished (those "
              "in progress continue from their last epoch-end checkpoint); the same command goes on",
              file=sys.stderr)
        return 128 + signum
    return 1 if failed else 0


def _state(out: Path, ledger_dir: Path | None, e, seed: int) -> str:
    on_disk = inspect(out, e, seed)
    if on_disk.state == "interrupted" and running(on_disk.path):
        return "running"
    if ledger_dir is None or ledger.read(ledger_dir, e, seed).state != "finished":
        return on_disk.state
    return "finished" if on_disk.state == "finished" else "recorded"  # in the ledger, not in --out


if __name__ == "__main__":
    sys.exit(main())

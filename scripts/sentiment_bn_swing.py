#!/usr/bin/env python
"""Why the book's sentiment model's validation accuracy swings: its output layer.

    python scripts/sentiment_bn_swing.py                      # book setup, 400 steps
    python scripts/sentiment_bn_swing.py --steps 200 --every 25 data.max_len=200

The book's output is ``sigmoid(batch_norm(W h + b))`` fed to a 2-way softmax. This trains
``experiment=book/ch7_lstm_sentiment`` (or the overrides given) with a plain loop over fodl's
own batches and, every ``--every`` steps, scores ``--val`` validation reviews three ways:
batch norm with its running statistics (what validation does), batch norm with the statistics
of the evaluation batch itself, and the pre-batch-norm ``W h + b`` with no normalisation at all
(sign of the difference). Beside them it prints, per output unit, the running mean / variance
against the mean / variance of ``W h + b`` over the whole validation subset, and the range of the
logits the softmax sees (in (0, 1): their difference, and so the softmax's confidence, is
bounded: at most ``sigmoid(1)`` = 0.731, a loss floor of 0.313).
Reads the data from --data-dir (default: $FODL_DATA_DIR, else ./data).
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fodl.config import compose_run, default_data_dir
from fodl.errors import FodlError, reports_errors


@torch.no_grad()
def probe(net, batches) -> dict:
    """Scores of the book head on ``batches`` (dropout off): running vs batch statistics."""
    net.eval()
    bn = net.bn
    z_all, y_all, run_ok, batch_ok, raw_ok, logits = [], [], 0, 0, 0, []
    for tokens, lengths, y in batches:
        z = net.fc(net.features(tokens, lengths))
        run = torch.sigmoid(bn(z))  # eval mode: running statistics
        mu, var = z.mean(0), z.var(0, unbiased=False)
        own = torch.sigmoid((z - mu) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
        run_ok += int((run.argmax(-1) == y).sum())
        batch_ok += int((own.argmax(-1) == y).sum())
        raw_ok += int((z.argmax(-1) == y).sum())
        z_all.append(z), y_all.append(y), logits.append(run)
    z, n, out = torch.cat(z_all), sum(len(y) for y in y_all), torch.cat(logits)
    gap = (out[:, 1] - out[:, 0]).abs()
    return {"acc_running": run_ok / n, "acc_batch": batch_ok / n, "acc_raw": raw_ok / n,
            "run_mean": bn.running_mean.tolist(), "run_var": bn.running_var.tolist(),
            "z_mean": z.mean(0).tolist(), "z_var": z.var(0, unbiased=False).tolist(),
            "z_min": z.min().item(), "z_max": z.max().item(),
            "logit_gap_median": gap.median().item(), "logit_gap_max": gap.max().item(),
            "same_class_share": float((out.argmax(-1) == out.argmax(-1).mode().values).float().mean())}


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="training steps (batches)")
    ap.add_argument("--every", type=int, default=50, help="probe every this many steps")
    ap.add_argument("--val", type=int, default=1024, help="validation reviews probed")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=book/ch7_lstm_sentiment)")
    args = ap.parse_args()
    from fodl.train import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(["experiment=book/ch7_lstm_sentiment", f"paths.data_dir={args.data_dir}",
                           f"paths.root_dir={tmp}", "logger=none", *args.overrides], Path(tmp) / "run")
        datamodule, module, _ = build(cfg)
    if getattr(module.net, "bn", None) is None:
        raise FodlError("scripts/sentiment_bn_swing.py probes the book's output layer: keep "
                        "model.net.output=book.")
    datamodule.setup("fit")
    net = module.net
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    val = [b for b in datamodule.val_dataloader()]
    kept, val_batches = 0, []
    for b in val[::-1]:  # shortest first: cheaper to probe; each batch whole
        if kept >= args.val:
            break
        val_batches.append(b)
        kept += len(b[2])
    floor = -math.log(torch.sigmoid(torch.tensor(1.0)).item())
    print(f"loss floor of a 2-way softmax over logits in (0, 1): {floor:.3f}; {kept} validation reviews probed")
    print("| step | train loss (last 50) | val acc, running stats | val acc, batch stats | val acc, W h + b | "
          "running mean | mean of W h + b | running var | var of W h + b | W h + b range | "
          "logit gap median / max | share given the majority answer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    losses, step, t0 = [], 0, time.perf_counter()
    epoch = 0
    while step < args.steps:
        loader = datamodule.train_dataloader()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            net.train()
            loss = F.cross_entropy(net(batch[0], batch[1]), batch[2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % args.every == 0 or step == args.steps:
                r = probe(net, val_batches)

                def f(v):
                    return "/".join(f"{x:.3g}" for x in v)
                print(f"| {step} | {sum(losses[-50:]) / len(losses[-50:]):.3f} | {r['acc_running']:.3f} | "
                      f"{r['acc_batch']:.3f} | {r['acc_raw']:.3f} | {f(r['run_mean'])} | {f(r['z_mean'])} | "
                      f"{f(r['run_var'])} | {f(r['z_var'])} | {r['z_min']:.3g} .. {r['z_max']:.3g} | "
                      f"{r['logit_gap_median']:.3f} / {r['logit_gap_max']:.3f} | {r['same_class_share']:.3f} |",
                      flush=True)
            if step >= args.steps:
                break
        epoch += 1
    print(f"{step} steps in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Test a checkpoint: python scripts/eval.py ckpt_path=path/to.ckpt [split=val] [data.eval_batch_size=...]"""

import sys

import hydra
from omegaconf import DictConfig

import fodl.catalog  # noqa: F401  (the --help lists: ${fodl_catalog:...})
from fodl.train import eval_overrides, evaluate, run_entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig):
    return run_entry(evaluate, cfg)


if __name__ == "__main__":
    sys.argv[1:] = eval_overrides(sys.argv[1:])
    main()

#!/usr/bin/env python
"""Train a book model: python scripts/train.py [model=<name>] [overrides...]  (see README)."""

import hydra
from omegaconf import DictConfig

import fodl.catalog  # noqa: F401  (the --help lists: ${fodl_catalog:...})
from fodl.train import run_entry, train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    return run_entry(train, cfg)


if __name__ == "__main__":
    main()

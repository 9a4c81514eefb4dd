"""A LightningDataModule whose splits are in-memory tensors batched by ``TensorLoader``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fodl.data.loader import MinibatchDataModule, TensorLoader, derive_seed


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` if given, else ``$FODL_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("FODL_DATA_DIR") or "data").expanduser()


class InMemoryDataModule(MinibatchDataModule):
    """Subclasses fill ``self.splits = {"train": (x, y), "val": ..., "test": ...}`` in ``setup``.

    Under DDP each process takes its own shard (the loaders are not ``DataLoader`` s, so
    Lightning's sampler injection does not apply; sharding is done here). With
    ``on_device=True`` the tensors are moved once to the training device, so no per-batch
    host-to-device copy happens. Other keys (``**kwargs``): :class:`~fodl.data.loader.MinibatchDataModule`.
    """

    def __init__(
        self,
        batch_size: int = 100,
        eval_batch_size: int = 1000,
        seed: int = 0,
        on_device: bool = True,
        drop_last: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.on_device = on_device
        self.drop_last = drop_last
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}
        # True when validation runs on the test split (the book's CIFAR setup, val_size=0): a
        # checkpoint chosen on it must not be the one whose test number is reported
        self.validation_is_test = False

    # -- helpers -------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _device_tensors(self, split: str) -> tuple[torch.Tensor, ...]:
        tensors = self.splits[split]
        t = self.trainer
        if self.on_device and t is not None:
            device = t.strategy.root_device
            if device.type != "cpu" and tensors[0].device != device:
                tensors = tuple(x.to(device, non_blocking=True) for x in tensors)
                self.splits[split] = tensors
        return tensors

    # text modules set this: batches per length-sorted pool (fodl.data.buckets.LengthBucketLoader)
    bucket_batches: int | None = None

    def _loader(self, split: str, train: bool) -> TensorLoader:
        rank, world = self._dist()
        cls, extra = TensorLoader, {}
        if self.bucket_batches is not None:
            from fodl.data.buckets import LengthBucketLoader

            cls, extra = LengthBucketLoader, {"bucket_batches": self.bucket_batches}
        loader = cls(
            self._device_tensors(split),
            self.batch_size if train else self.eval_batch_size,
            # trainer.overfit_batches (debug=overfit): the same first batches every epoch
            shuffle=train and not (self.trainer is not None and self.trainer.overfit_batches),
            drop_last=self.drop_last and train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: self.trainer.current_epoch) if (train and self.trainer) else None,
            **extra,
        )
        return self.training_loader(loader) if train else loader

    # -- batched, on-device transforms (augmentation) ---------------------------------------
    def transform(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Inputs of an ``(x, y)`` batch after the transfer to the device (on the GPU when
        training there): the place for augmentation. The default leaves them alone."""
        return x

    @property
    def transforms_batches(self) -> bool:
        """Whether :meth:`transform` has anything to do (else batches skip the hook)."""
        return type(self).transform is not InMemoryDataModule.transform

    def on_after_minibatch_transfer(self, batch):
        train = self.trainer is not None and self.trainer.training
        return self.transform(batch[0], train), batch[1]

    def augmentation_generator(self, device: torch.device) -> torch.Generator:
        """The augmentation stream of this (seed, epoch, process): re-seeded at each epoch, so
        a run resumed from an epoch's checkpoint draws exactly the distortions the
        uninterrupted run drew (no generator state to save), and ranks draw differently."""
        t = self.trainer
        key = (device, t.current_epoch if t is not None else 0)
        if getattr(self, "_generator_key", None) != key:
            rank = t.global_rank if t is not None else 0
            self._generator = torch.Generator(device=device).manual_seed(
                derive_seed(self.seed, key[1], rank))
            self._generator_key = key
        return self._generator

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> TensorLoader:
        return self._loader("test", False)

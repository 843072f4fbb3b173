"""The shared base of the generation datamodules (``vadapt.data.generation``, ``vadapt.data.video``).

``_GenerationDataModule`` builds ``self.datasets[split]`` once in ``setup`` and gives loaders with one size a
batch (a ``BucketBatchSampler`` for datasets with a ``bucket_of`` list); with it the helpers its subclasses share:
the ``resolution`` option (``_size``), the seeded validation hold-out (``_split``), the common option checks
(``_check_common``) and uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` (``_to_tensor``).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .buckets import Bucket, BucketBatchSampler
from .io import DataError


# ---- small helpers ---------------------------------------------------------------------------------------------
def _size(value: int | Sequence[int], key: str) -> Bucket:
    size = (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"{key} must be a positive int or [height, width], got {value!r}")
    return size  # type: ignore[return-value]


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, val) indices with ``fraction`` held out (at least one when ``fraction > 0`` and ``n >= 2``)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or n < 2:
        return list(range(n)), []
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)


# ---- shared datamodule base ------------------------------------------------------------------------------------
class _GenerationDataModule(L.LightningDataModule):
    """Datasets in ``self.datasets[split]`` (with an optional ``bucket_of`` list); loaders with one size a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def make_datasets(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the train / val datasets (once); bad input stops here."""
        if not self.datasets:
            self.make_datasets()

    def _loader(self, split: str) -> DataLoader | list:
        self.setup()
        dataset = self.datasets.get(split)
        if dataset is None or len(dataset) == 0:
            return []
        hp = self.hparams
        workers = dict(num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)
        bucket_of = getattr(dataset, "bucket_of", None)
        if bucket_of is not None:
            sampler = BucketBatchSampler(bucket_of, hp.batch_size, shuffle=split == "train",
                                         drop_last=split == "train" and hp.drop_last, seed=hp.seed)
            return DataLoader(dataset, batch_sampler=sampler, **workers)
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=split == "train",
                          drop_last=split == "train" and hp.drop_last, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")


def _check_common(batch_size: int, num_workers: int, val_fraction: float) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")

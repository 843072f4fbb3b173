"""Mixed-resolution buckets of the generation datamodules (``vadapt.data.generation``, ``vadapt.data.video``).

``parse_buckets`` reads the ``buckets`` option (``[[h, w], ...]``), ``nearest_bucket`` picks the bucket of closest
aspect ratio for an image, and ``BucketBatchSampler`` yields batches of ONE bucket each (one image size per batch),
shuffled per epoch, deterministic from ``seed`` and shared out over the ranks of a multi-GPU (DDP) run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .io import DataError

Bucket = tuple[int, int]


def parse_buckets(buckets: Sequence[Sequence[int]] | None) -> list[Bucket] | None:
    """``[[h, w], ...]`` -> a list of distinct ``(h, w)`` in the given order (``None`` stays ``None``)."""
    if buckets is None:
        return None
    out: list[Bucket] = []
    for b in buckets:
        if isinstance(b, (int, np.integer)) or len(b) != 2 or min(int(v) for v in b) < 1:
            raise DataError(f"buckets must be a list of [height, width] pairs of positive ints, got {b!r} in it")
        if tuple(int(v) for v in b) not in out:
            out.append((int(b[0]), int(b[1])))
    if not out:
        raise DataError("buckets is empty: give [[height, width], ...] or null for one resolution")
    return out


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> int:
    """Index of the bucket whose aspect ratio ``h / w`` is closest to the image's (log ratio; ties: the first)."""
    ratio = math.log(height / width)
    gaps = [abs(math.log(h / w) - ratio) for h, w in buckets]
    best = min(gaps)
    return next(i for i, g in enumerate(gaps) if g <= best + 1e-9)


# ---- bucket batch sampler --------------------------------------------------------------------------------------
class _EpochHook:
    """Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``: forward it to the batch sampler."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that all share one bucket (so one image size per batch).

    Each epoch the indices of every bucket are shuffled and cut into batches of ``batch_size`` (the last one of
    a bucket may be smaller unless ``drop_last``), then the batches of all buckets are shuffled together; all
    from ``numpy.random.default_rng([seed, epoch])``, so the same seed and epoch give the same batches. The epoch
    is the one ``set_epoch`` gave (Lightning calls it every epoch), else it counts the passes. With
    ``num_replicas > 1`` (default: the ``torch.distributed`` world size) rank ``r`` takes every
    ``num_replicas``-th batch (the list wrapped around so every rank gets as many).
    """

    def __init__(self, buckets: Sequence[int], batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None) -> None:
        """
        Args:
            buckets: the bucket id of every dataset index ``(N,)``.
            batch_size: the most indices per batch."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.bucket_of = np.asarray(buckets, dtype=np.int64).reshape(-1)
        # deliberately not named ``batch_size`` / ``drop_last``: Lightning would then try to re-create this
        # sampler around a DistributedSampler (DDP needs ``use_distributed_sampler: false`` instead)
        self.per_batch, self.drop_incomplete, self.shuffle, self.seed = int(batch_size), drop_last, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _world(self) -> tuple[int, int]:
        replicas, rank = self.num_replicas, self.rank
        if replicas is None:
            dist = torch.distributed
            replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return replicas, rank

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of an epoch (every rank's), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        out: list[list[int]] = []
        for bucket in np.unique(self.bucket_of):
            idx = np.flatnonzero(self.bucket_of == bucket)
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.per_batch):
                chunk = idx[start: start + self.per_batch].tolist()
                if len(chunk) == self.per_batch or not self.drop_incomplete:
                    out.append(chunk)
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        replicas, rank = self._world()
        if replicas <= 1 or not batches:
            return batches
        total = math.ceil(len(batches) / replicas) * replicas
        padded = [batches[i % len(batches)] for i in range(total)]
        return padded[rank::replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._shard(self.batches(self.epoch))
        self.epoch += 1  # a later pass without set_epoch gets the next epoch's order
        return iter(batches)

    def __len__(self) -> int:
        counts = np.bincount(self.bucket_of - self.bucket_of.min()) if len(self.bucket_of) else np.zeros(0, int)
        counts = counts[counts > 0]
        per = counts // self.per_batch if self.drop_incomplete else -(-counts // self.per_batch)
        replicas, _ = self._world()
        return math.ceil(int(per.sum()) / replicas)

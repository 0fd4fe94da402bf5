"""A shuffling sampler whose order depends only on (seed, epoch), and the data-module state that
makes a resumed run see exactly the batches an uninterrupted run would have seen.

Lightning calls ``set_epoch`` every epoch. Mid-epoch, the checkpoint also holds the data loader's
position (torchdata's ``StatefulDataLoader`` counts the batches it yielded and fast-forwards), but
on a restart Lightning builds that iterator before it calls ``set_epoch``; the data module
therefore saves the sampler's epoch in the checkpoint and starts the new sampler there.

With several ranks (DDP) the sampler shards the epoch's order itself, as ``DistributedSampler``
does (padded to a multiple of the ranks, rank r takes every r-th index), and is one: Lightning
then leaves it alone instead of wrapping it (its wrapper would draw the whole order up front and
shuffle it again by its own epoch count, so a mid-epoch resume would lose its place).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """The order of ``num_samples`` items in an epoch depends only on ``(seed, epoch)``; rank
    ``rank`` of ``num_replicas`` draws its share of it (``len``: the share's size)."""

    def __init__(self, num_samples: int, seed: int = 0, epoch: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch
        self.drawn = 0

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()  # type: ignore[arg-type]
        order += order[:self.total_size - len(order)]
        self.drawn = 0
        for index in order[self.rank:self.total_size:self.num_replicas]:
            self.drawn += 1
            yield index

    @property
    def next_epoch(self) -> int:
        """The epoch whose order the next iterator must follow: this one while it is unfinished."""
        return self.epoch + 1 if self.drawn >= self.num_samples else self.epoch


class ResumableShuffle:
    """Mixin for LightningDataModules: checkpoints which epoch's order the training data is in.

    Lightning creates the first training iterator of a run before it calls ``set_epoch``, so a
    resumed run must start its sampler at the right epoch by itself."""

    _train_sampler: EpochShuffleSampler | None = None
    _resume_epoch: int = 0

    def train_sampler(self, num_samples: int, seed: int) -> EpochShuffleSampler:
        """The training sampler; sharded when the attached trainer runs several ranks."""
        trainer = getattr(self, "trainer", None)
        shards = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        self._train_sampler = EpochShuffleSampler(num_samples, seed, epoch=self._resume_epoch,
                                                  num_replicas=int(shards.get("num_replicas", 1)),
                                                  rank=int(shards.get("rank", 0)))
        return self._train_sampler

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": self._train_sampler.next_epoch if self._train_sampler else self._resume_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("sampler_epoch", 0))

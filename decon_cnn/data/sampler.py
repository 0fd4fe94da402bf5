"""A shuffling sampler whose order depends only on (seed, epoch), and the data-module state that
makes a resumed run see exactly the batches an uninterrupted run would have seen.

Lightning calls ``set_epoch`` every epoch. Mid-epoch, the checkpoint also holds the data loader's
position (torchdata's ``StatefulDataLoader`` counts the batches it yielded and fast-forwards), but
on a restart Lightning builds that iterator before it calls ``set_epoch``; the data module
therefore saves the sampler's epoch in the checkpoint and starts the new sampler there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int = 0, epoch: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = epoch
        self.drawn = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        self.drawn = 0
        for index in torch.randperm(self.num_samples, generator=gen).tolist():
            self.drawn += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples

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
        self._train_sampler = EpochShuffleSampler(num_samples, seed, epoch=self._resume_epoch)
        return self._train_sampler

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": self._train_sampler.next_epoch if self._train_sampler else self._resume_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("sampler_epoch", 0))

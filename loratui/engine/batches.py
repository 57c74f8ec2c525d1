"""The order in which training sees the images, as a pure function of (seed, epoch).

Nothing here holds state between steps: the micro-batch at position ``i`` of
the run is computed from the seed and ``i`` alone. That is what makes resume
exact (the data position is one integer) and multi-GPU sharding trivial
(process ``r`` of ``n`` takes every n-th micro-batch).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Entry:
    """One training example: which cached item, and whether it is the flipped variant."""

    item: int
    flip: bool = False


@dataclass(frozen=True)
class BatchPlan:
    """``items[i]`` is the bucket of item i; ``repeats[i]`` how often it appears per epoch."""

    buckets: tuple[tuple[int, int], ...]
    repeats: tuple[int, ...]
    batch_size: int
    seed: int
    flip: bool = False

    # Cached on the instance: the trainer asks for it several times a step, and both it and the
    # epoch tables below cost O(images) to build (hashing the plan as a cache key did too).
    @cached_property
    def batches_per_epoch(self) -> int:
        counts: dict[tuple[int, int], int] = {}
        for bucket, rep in zip(self.buckets, self.repeats):
            counts[bucket] = counts.get(bucket, 0) + rep
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    @property
    def images_per_epoch(self) -> int:
        return sum(self.repeats)

    def epoch(self, epoch: int) -> list[list[Entry]]:
        return list(self._batches(epoch))

    def micro_batch(self, index: int) -> tuple[int, list[Entry]]:
        """The epoch and entries of the index-th micro-batch of the whole run."""
        per_epoch = self.batches_per_epoch
        epoch, offset = divmod(index, per_epoch)
        return epoch, list(self._batches(epoch)[offset])

    @cached_property
    def _epoch_tables(self) -> dict[int, tuple[tuple[Entry, ...], ...]]:
        return {}

    def _batches(self, epoch: int) -> tuple[tuple[Entry, ...], ...]:
        tables = self._epoch_tables
        found = tables.get(epoch)
        if found is None:
            while len(tables) >= _EPOCHS_KEPT:
                tables.pop(next(iter(tables)))
            found = tables[epoch] = _epoch_batches(self, epoch)
        return found


_EPOCHS_KEPT = 4  # enough for the epoch in progress and the next one across a boundary


def _epoch_batches(plan: BatchPlan, epoch: int) -> tuple[tuple[Entry, ...], ...]:
    rng = random.Random(f"{plan.seed}:epoch:{epoch}")
    by_bucket: dict[tuple[int, int], list[Entry]] = {}
    for item, (bucket, rep) in enumerate(zip(plan.buckets, plan.repeats)):
        for _ in range(rep):
            flip = plan.flip and rng.random() < 0.5
            by_bucket.setdefault(bucket, []).append(Entry(item, flip))
    batches: list[tuple[Entry, ...]] = []
    for bucket in sorted(by_bucket):
        entries = by_bucket[bucket]
        rng.shuffle(entries)
        # A batch never mixes buckets: every tensor in it has the same shape.
        for start in range(0, len(entries), plan.batch_size):
            batches.append(tuple(entries[start:start + plan.batch_size]))
    rng.shuffle(batches)
    return tuple(batches)


def planned_optimizer_steps(batches_per_epoch: int, *, epochs: int, max_steps: int, grad_accum: int,
                            num_processes: int = 1) -> int:
    """Optimizer steps of a whole run: max_steps, or with epochs the micro-batches of every epoch
    together divided by the micro-batches one optimizer step takes. The wizard and the engine both
    count with this, so the Review's number is the run's."""
    if epochs > 0:
        micro = epochs * batches_per_epoch
        return max(1, math.ceil(micro / (grad_accum * num_processes)))
    return max_steps


def total_optimizer_steps(plan: BatchPlan, *, epochs: int, max_steps: int, grad_accum: int,
                          num_processes: int = 1) -> int:
    return planned_optimizer_steps(plan.batches_per_epoch, epochs=epochs, max_steps=max_steps,
                                   grad_accum=grad_accum, num_processes=num_processes)

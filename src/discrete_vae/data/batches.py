"""Minibatches by index slicing over one in-memory tensor, in an exact and resumable order.

Every epoch ``e`` has its own permutation, drawn on the CPU by a ``torch.Generator`` seeded with
``derive_seed(seed, e)`` and then moved to the data's device; batch ``b`` of a rank is
``data[perm_local[b * B:(b + 1) * B]]``. With dynamic binarization each batch is
``bernoulli(batch)`` with a generator on the data's device seeded with
``derive_seed(seed, e, position, 1)``, where ``position`` is the batch's first offset in the
rank's shard. The whole order is therefore a pure function of ``(seed, epoch, position)``, which
is all that :meth:`BatchIterator.state_dict` stores, so resuming reproduces batches bitwise.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """Mix integers into one seed in ``[0, 2**63)`` (SplitMix64 over the keys, in order).

    Distinct key tuples give unrelated streams, unlike ``seed * c + epoch`` which collides.
    """
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state + (int(key) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


class BatchIterator:
    """Index-slice minibatches over one in-memory tensor; exact, resumable order.

    - ``data``: ``(N, D)`` tensor on any device; batches come back as float32 on that device.
    - Each epoch uses a fresh permutation (``shuffle=True``) seeded from ``(seed, epoch)``; with
      ``shuffle=False`` the order is ``0..N-1`` every epoch.
    - ``dynamic_binarization=True``: ``data`` holds grey levels in ``[0, 1]`` and every batch is
      a fresh Bernoulli draw, seeded from ``(seed, epoch, position)``.
    - ``world_size > 1`` (DistributedDataParallel): every rank computes the same permutation,
      truncates it to ``(N // world_size) * world_size`` entries so that all ranks take the same
      number of steps, and keeps the entries ``rank, rank + world_size, ...``: the ranks' shards
      are disjoint.
    - ``drop_last=True`` drops the incomplete last batch of each epoch; with ``False`` the last
      batch of an epoch may hold fewer than ``batch_size`` rows.
    - :meth:`next` rolls over epochs forever; :attr:`epoch` counts completed epochs.
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        seed: int,
        *,
        dynamic_binarization: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if data.dim() != 2:
            raise ConfigError(
                f"BatchIterator needs a 2-D (N, D) tensor, got shape {tuple(data.shape)}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.dynamic_binarization = dynamic_binarization
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.samples_per_rank = data.shape[0] // world_size  # equal shard size for every rank
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size {batch_size} is larger than the {self.samples_per_rank} samples "
                f"per rank (N={data.shape[0]}, world_size={world_size}); lower the batch size"
            )
        self._epoch = 0
        self._position = 0  # offset of the next batch in this rank's shard
        self._perm: torch.Tensor | None = None  # (samples_per_rank,) this epoch's shard indices
        self._bin_gen: torch.Generator | None = None

    @property
    def epoch(self) -> int:
        """Number of completed epochs; the next batch comes from this epoch."""
        return self._epoch

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch for this rank."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _epoch_done(self, position: int) -> bool:
        """Whether no (kept) batch starts at ``position`` of this rank's shard."""
        if self.drop_last:
            return position + self.batch_size > self.samples_per_rank
        return position >= self.samples_per_rank

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's share of epoch ``epoch``'s order: ``(samples_per_rank,)`` indices."""
        n = self.data.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=gen)  # (N,) on the CPU
        else:
            perm = torch.arange(n)
        shard = perm[: self.samples_per_rank * self.world_size][self.rank :: self.world_size]
        return shard.to(self.data.device)

    def next(self) -> torch.Tensor:
        """The next ``(batch_size, D)`` float32 batch on the data's device."""
        if self._perm is None:
            self._perm = self.epoch_indices(self._epoch)
        start = self._position
        stop = min(start + self.batch_size, self.samples_per_rank)
        batch = self.data[self._perm[start:stop]].to(torch.float32)  # (B, D)
        if self.dynamic_binarization:
            batch = torch.bernoulli(batch, generator=self._binarization_generator(start))
        self._position = stop
        if self._epoch_done(self._position):
            self._epoch, self._position, self._perm = self._epoch + 1, 0, None
        return batch

    def _binarization_generator(self, position: int) -> torch.Generator:
        if self._bin_gen is None:
            self._bin_gen = torch.Generator(device=self.data.device)
        return self._bin_gen.manual_seed(derive_seed(self.seed, self._epoch, position, 1))

    def state_dict(self) -> dict[str, int]:
        """Plain ints: ``{"epoch", "position", "seed"}``; ``position`` is an offset in the shard."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``; the following batches equal those the saved iterator would give."""
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ConfigError(f"BatchIterator state lacks {', '.join(sorted(missing))}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.samples_per_rank:
            raise ConfigError(
                f"BatchIterator state epoch={epoch} position={position} is out of range "
                f"(0..{self.samples_per_rank} samples per rank)"
            )
        self.seed = int(state["seed"])
        self._epoch, self._position, self._perm = epoch, position, None
        if self._epoch_done(position):
            self._epoch, self._position = epoch + 1, 0

"""Anchor training data as the loop sees it: texts (read by lerpray.data.text_io) tokenised and packed into
fixed-size blocks, and which blocks each worker trains on at each step.

Everything is a pure function of (texts, tokenizer, block size, seed), so a resumed or restarted worker sees exactly
the batches it would have seen: `BlockSchedule.batch(step, micro)` needs no iterator state in checkpoints.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from lerpray.data.errors import DataError


def pack_blocks(texts: Sequence[str], tokenizer, block_size: int, seed: int) -> torch.Tensor:
    """Tokenise each text (+ EOS), shuffle the examples with `seed`, concatenate and cut into blocks.

    The tail shorter than a block is dropped. Returns token ids [N, block_size] (long).
    """
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)  # mixes neighbouring examples into one block the same way on every worker
    encoded = tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [tok for ids in encoded for tok in (*ids, *eos)]
    num_blocks = len(stream) // block_size
    if num_blocks == 0:
        raise DataError(
            f"the data holds {len(stream)} tokens, fewer than one block of {block_size}; add data or lower "
            f"training.block_size"
        )
    return torch.tensor(stream[: num_blocks * block_size], dtype=torch.long).view(num_blocks, block_size)  # [N, T]


def steps_for_epochs(num_blocks: int, epochs: float, blocks_per_step: int) -> int:
    """Optimizer steps that cover `epochs` passes over `num_blocks` (at least one)."""
    return max(1, math.ceil(epochs * num_blocks / blocks_per_step))


class BlockSchedule:
    """Which blocks worker `rank` of `world_size` trains on at (step, micro-step).

    Sample g of the global stream is ((step * grad_accum + micro) * world_size + rank) * batch_size + j; it is block
    perm_e[g mod N] of epoch e = g div N, where perm_e is a permutation seeded by (seed, e).
    """

    def __init__(self, num_blocks: int, *, batch_size: int, grad_accum: int, rank: int, world_size: int, seed: int):
        self.num_blocks = num_blocks
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def blocks_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def indices(self, step: int, micro: int) -> list[int]:
        first = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size
        return [self._block(g) for g in range(first, first + self.batch_size)]

    def batch(self, blocks: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        return blocks[self.indices(step, micro)]  # [B, T]

    def _block(self, g: int) -> int:
        epoch, pos = divmod(g, self.num_blocks)
        if epoch not in self._perms:
            self._perms = {epoch: self._perm(epoch)}  # one epoch at a time: the stream moves forward
        return int(self._perms[epoch][pos])

    def _perm(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_blocks, generator=generator)  # [N]

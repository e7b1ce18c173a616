"""The tensors of one engine forward pass: token ids, absolute positions, write slots and the attention mask.

Rows live in slots of a `SlotCache`, where a token at position p sits at index p of its slot. A query at position p
may see the entries [0, p] of its own slot, nothing else: that is the whole mask, whatever the other rows' lengths.
Padding queries (a decode batch's idle slots, a prefill chunk's left padding) write to the cache's scratch slot,
which no row owns, at a position that is already within their row's length (< capacity): they never touch a
row's entries and never need cache room of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def visibility_mask(positions: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """Additive mask [N, 1, Q, length]: 0 where key index <= the query's position, a large negative elsewhere.

    Additive (not boolean) so that eager and SDPA attention both take it; finite, so a padding row that sees
    nothing gets a uniform softmax instead of NaNs.
    """
    keys = torch.arange(length, device=positions.device)  # [L]
    visible = keys[None, None, :] <= positions[:, :, None]  # [N, Q, L]
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]  # [N, 1, Q, L]


def chunk_inputs(
    chunks: Sequence[Sequence[int]], starts: Sequence[int], slots: Sequence[int], pad_id: int, scratch: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded ids, positions and write slots [M, Q] of prompt chunks; chunk m starts at position starts[m].

    Every chunk ends in the last column, so keeping one column of logits keeps each chunk's last token. A padding
    query carries its chunk's first position and writes to the scratch slot.
    """
    width = max(len(chunk) for chunk in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    positions = torch.tensor(starts, dtype=torch.long)[:, None].repeat(1, width)  # [M, Q]
    writes = torch.full((len(chunks), width), scratch, dtype=torch.long)
    for m, chunk in enumerate(chunks):
        pad = width - len(chunk)
        ids[m, pad:] = torch.tensor(chunk, dtype=torch.long)
        positions[m, pad:] += torch.arange(len(chunk))
        writes[m, pad:] = slots[m]
    return ids.to(device), positions.to(device), writes.to(device)


def decode_inputs(
    rows: Sequence[tuple[int, int, int]], width: int, pad_id: int, scratch: int
) -> tuple[list[int], list[int], list[int]]:
    """Ids, positions and write slots of a decode step over slots [0, width): rows (slot, token, position) at
    their slots, every other slot a padding query (pad id, position 0, the scratch slot)."""
    ids, positions, writes = [pad_id] * width, [0] * width, [scratch] * width
    for slot, token, position in rows:
        ids[slot], positions[slot], writes[slot] = token, position, slot
    return ids, positions, writes

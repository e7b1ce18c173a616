"""The tensors of one engine forward pass: token ids, absolute positions and the attention mask, per row.

Rows live in slots of a `SlotCache`, where a token at position p sits at index p of its slot. A query at position p
may see the entries [0, p] of its own slot, nothing else: that is the whole mask, whatever the other rows' lengths.
Padding queries (a decode batch's idle slots, a prefill chunk's right padding) get positions past their row's end;
what they write there is overwritten by the row's next real token before any query can see it.
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
    chunks: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Right-padded ids and positions [M, Q] of prompt chunks; chunk m starts at position starts[m]."""
    width = max(len(chunk) for chunk in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    for m, chunk in enumerate(chunks):
        ids[m, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
    positions = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(width)[None, :]  # [M, Q]
    return ids.to(device), positions.to(device)

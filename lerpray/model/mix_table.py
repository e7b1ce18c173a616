"""The engine's coefficient rows: one mix per KV-cache slot, written on the host, uploaded once per forward.

Row s of the table is the mix of the request in slot s ([slots, K]). Mixes change on the host (a request joins, a
schedule moves on, a steer hook answers, a slot is freed), so the table keeps its rows in host memory and sends
the whole table to the device in one copy before a forward that follows a change (`upload`), instead of one small
copy per row. The device copy is a fixed buffer: a captured CUDA graph reads it as a static input.

Host reads (which anchors a step uses, for the pinned active-anchor buffers of the graphs) read `host`: no device
sync. On CUDA the host rows are pinned and the upload is asynchronous; the engine syncs once per step (on its
sampled tokens) after every forward it launches, so the host never rewrites rows while their upload is in flight.
On the CPU host and device rows are one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["MixTable"]


class MixTable:
    def __init__(self, slots: int, anchors: int, device: torch.device) -> None:
        on_gpu = device.type == "cuda"
        self.host = torch.zeros(slots, anchors, pin_memory=on_gpu)  # [S, K] float32
        self.device_rows = torch.zeros(slots, anchors, device=device) if on_gpu else self.host  # [S, K]
        self._stale = False  # host rows changed since the last upload

    def write(self, slot: int, coeffs: Sequence[float]) -> None:
        self.host[slot] = torch.tensor(coeffs, dtype=torch.float32)
        self._stale = True

    def clear(self, slots: list[int]) -> None:
        """Zero freed slots' rows (a stale mix would keep its anchors active) and empty the list."""
        if slots:
            self.host[slots] = 0.0
            slots.clear()
            self._stale = True

    def upload(self) -> Tensor:
        """The device rows [S, K], brought up to date with the host's."""
        if self._stale and self.device_rows is not self.host:
            self.device_rows.copy_(self.host, non_blocking=True)
        self._stale = False
        return self.device_rows

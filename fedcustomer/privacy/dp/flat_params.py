"""A model's trainable parameters as views of one flat tensor, for the length of a training epoch.

Why: at DP-SGD's batch sizes a tensor operation costs its dispatch, not its arithmetic. Fast clipping
already keeps every gradient as a view of one flat buffer; with the parameters (and the optimizer's
momentum) laid out the same way, SGD's momentum and parameter updates are two or three operations for
the whole model instead of about three per parameter. Element by element the arithmetic is the same,
so the weights are bit-identical.

The views are set with ``Parameter.data`` (the parameter objects, which optimizers, anchors and hooks
hold, stay the same) and are undone by :meth:`FlatParameters.release`: afterwards every parameter owns
its storage again, so the model a caller keeps, saves or sends shares nothing with the trainer's
buffers or with its other parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FlatParameters:
    """Binds ``params`` to consecutive views of one flat tensor (in order) and unbinds them.

    The layout is ``params`` in the given order, each flattened, with no gaps: the layout of
    :class:`~fedcustomer.privacy.dp.fast_clipping.FastGradientClipper`'s gradient buffer for the
    same parameter list.
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("no parameters to flatten")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"flat parameters need one dtype and device, got {sorted(map(str, kinds))}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("a parameter is listed twice")
        self.sizes = [p.numel() for p in self.params]
        self.flat: torch.Tensor | None = None
        self._pointers: list[int] = []

    @property
    def bound(self) -> bool:
        return self.flat is not None

    def bind(self) -> torch.Tensor:
        """Copy the parameters' current values into a fresh flat tensor and make them views of it."""
        if self.flat is not None:
            return self.flat
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        views = [v.view(p.shape) for p, v in zip(self.params, torch.split(flat, self.sizes))]
        for p, v in zip(self.params, views):
            p.data = v
        self._pointers = [v.data_ptr() for v in views]
        self.flat = flat
        return flat

    def intact(self) -> bool:
        """Whether every parameter still points into the flat tensor (nobody reassigned ``.data``)."""
        return self.flat is not None and all(
            p.data_ptr() == ptr for p, ptr in zip(self.params, self._pointers)
        )

    def release(self) -> None:
        """Give every parameter its own storage again, holding its current values."""
        if self.flat is None:
            return
        for p in self.params:
            p.data = p.data.clone(memory_format=torch.contiguous_format)
        self.flat, self._pointers = None, []

"""Opacus's floating-point-safe Gaussian noise, drawn a block of steps at a time into reused buffers.

Why: fast clipping adds noise to one flat gradient buffer every step. Opacus's
``_generate_noise(secure_mode=True)`` allocates a zero tensor, four fresh draws and the halved
result on every call and makes two extra passes over them; for a small model these passes cost
a noticeable part of a step. :class:`NoiseBlocks` produces the same noise with two
buffers that live as long as the optimizer:

* same construction (Holohan et al. 2021, arXiv:2107.10138, section 5.1, with n = 2, as in
  Opacus's secure mode): per call one throw-away ``N(0, std^2)`` sample of shape (1, 1), then four
  independent ``N(0, std^2)`` draws of the block's full shape, summed and halved, so every
  coordinate is ``N(0, std^2)`` and its low-order bits are not those of a single draw;
* same generator semantics: the caller's ``torch.Generator`` is consumed in the same order and
  amounts as by ``_generate_noise`` on a block of the same shape (the (1, 1) draw with
  ``torch.normal``, then four full-shape draws with ``Tensor.normal_``, which is what
  ``torch.normal`` runs, in torch's default dtype), so a seeded generator yields Opacus's
  values, summed in Opacus's order (draw 1 + draw 2 + draw 3 + draw 4), halved;
* the division by the expected batch size (Opacus's ``scale_grad``) is folded into the halving:
  ``x / (2 B)`` is the correctly rounded ``(x / 2) / B`` because halving is exact.
"""

from __future__ import annotations

import torch


class NoiseBlocks:
    """Rows of ``N(0, std^2) / divisor`` noise for a flat buffer of ``numel`` values, one row per step.

    One block of ``block_rows`` rows is drawn at a time, with Opacus's secure-mode
    construction (see the module docstring), or with its plain single draw when
    ``secure_mode`` is false; the noise is data-independent, so drawing a block ahead changes
    nothing about its distribution. A row is valid until the next block is drawn, i.e. for
    ``block_rows`` calls of :meth:`next_row`.
    """

    def __init__(
        self,
        numel: int,
        *,
        std: float,
        divisor: float,
        block_rows: int,
        generator: torch.Generator | None,
        dtype: torch.dtype,
        device: torch.device,
        secure_mode: bool = True,
    ) -> None:
        if numel < 1 or block_rows < 1:
            raise ValueError("numel and block_rows must be >= 1")
        self.std, self.divisor, self.generator = float(std), float(divisor), generator
        self._device, self.secure_mode = device, secure_mode
        self._block = torch.empty((block_rows, numel), dtype=dtype, device=device)
        # torch.normal without a dtype (as Opacus calls it) draws in the default dtype.
        draw_dtype = torch.get_default_dtype()
        self._draw = self._block if draw_dtype == dtype else torch.empty_like(self._block, dtype=draw_dtype)
        self._spare = torch.empty_like(self._block, dtype=draw_dtype)
        self._rows: list[torch.Tensor] = []
        self._next = 0

    def next_row(self) -> torch.Tensor:
        """The next step's noise, already divided by ``divisor``."""
        if self._next >= len(self._rows):
            self._fill()
        row = self._rows[self._next]
        self._next += 1
        return row

    def _fill(self) -> None:
        block = self._block
        if self.std == 0.0:  # Opacus returns zeros and draws nothing
            block.zero_()
        elif not self.secure_mode:  # Opacus's plain path: one draw in the buffer's dtype
            block.normal_(0.0, self.std, generator=self.generator).div_(self.divisor)
        else:
            std, generator = self.std, self.generator
            # The throw-away first sample, exactly as Opacus draws it.
            torch.normal(mean=0, std=std, size=(1, 1), device=self._device, generator=generator)
            first = self._draw.normal_(0.0, std, generator=generator)
            if first is not block:
                block.copy_(first)
            for _ in range(3):
                block.add_(self._spare.normal_(0.0, std, generator=generator))
            block.div_(2.0 * self.divisor)
        self._rows = list(block.unbind(0))
        self._next = 0

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

With ``ahead=True`` the next block is drawn on a helper thread while the steps use the current
one (two blocks, alternating). The noise is data-independent and the generator is consumed by
that one thread, block after block in the same order, so a seeded generator gives the same
values; what changes is only when they are drawn. On a machine with a core to spare the four
draws per coordinate, the largest fixed cost of a small model's DP step, no longer hold up the
step. The generator must not be used by anyone else while the blocks are in use: the helper
may be drawing from it at any moment until :meth:`NoiseBlocks.close`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from fedcustomer.errors import ConfigError

_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _drawing_thread() -> ThreadPoolExecutor:
    """One helper thread per process, shared by every :class:`NoiseBlocks` drawing ahead (a
    1,000-partner simulation does not start a thread per partner). Fills are short and queue."""
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dp-noise")
        return _helper


def _forget_helper_after_fork() -> None:
    """A forked child has the executor object but not its thread; it starts its own."""
    global _helper, _helper_lock
    _helper, _helper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helper_after_fork)


NOISE_AHEAD_ENV = "FEDCUSTOMER_NOISE_AHEAD"
_SETTINGS = {"auto": None, "on": True, "off": False}


def draw_ahead_wanted() -> bool:
    """Whether DP-SGD should draw its noise ahead on the helper thread: ``FEDCUSTOMER_NOISE_AHEAD``
    = ``on`` / ``off`` / ``auto`` (the default: when this process may run on more cores than
    torch's intra-op threads use, so the helper runs beside the step instead of taking turns
    with it). A simulation that gives every core a worker process sets it to ``off``."""
    setting = os.environ.get(NOISE_AHEAD_ENV, "auto").strip().lower()
    if setting not in _SETTINGS:
        raise ConfigError(f"{NOISE_AHEAD_ENV} must be one of {', '.join(_SETTINGS)}; got {setting!r}")
    wanted = _SETTINGS[setting]
    if wanted is not None:
        return wanted
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


class NoiseBlocks:
    """Rows of ``N(0, std^2) / divisor`` noise for a flat buffer of ``numel`` values, one row per step.

    One block of ``block_rows`` rows is drawn at a time, with Opacus's secure-mode
    construction (see the module docstring), or with its plain single draw when
    ``secure_mode`` is false; the noise is data-independent, so drawing a block ahead changes
    nothing about its distribution. A row is valid until the next block is drawn, i.e. for
    ``block_rows`` calls of :meth:`next_row`. With ``ahead``, the following block is drawn on
    the helper thread meanwhile; call :meth:`close` when done so that no draw is left running.
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
        ahead: bool = False,
    ) -> None:
        if numel < 1 or block_rows < 1:
            raise ValueError("numel and block_rows must be >= 1")
        if ahead and generator is None:  # torch's global generator is everybody's
            raise ValueError("drawing ahead needs a generator of its own, not torch's global one")
        self.std, self.divisor, self.generator = float(std), float(divisor), generator
        self._device, self.secure_mode, self.ahead = device, secure_mode, ahead
        self._blocks = [
            torch.empty((block_rows, numel), dtype=dtype, device=device) for _ in range(1 + ahead)
        ]
        # torch.normal without a dtype (as Opacus calls it) draws in the default dtype.
        draw_dtype = torch.get_default_dtype()
        self._draw = None if draw_dtype == dtype else torch.empty_like(self._blocks[0], dtype=draw_dtype)
        self._spare = torch.empty_like(self._blocks[0], dtype=draw_dtype)
        self._rows: list[torch.Tensor] = []
        self._next = 0
        self._current = 0  # which block the rows come from
        self._pending: Future[None] | None = None  # the other block, being drawn on the helper
        self._ready = False  # the other block was drawn in full before close()

    def next_row(self) -> torch.Tensor:
        """The next step's noise, already divided by ``divisor``."""
        if self._next >= len(self._rows):
            self._advance()
        row = self._rows[self._next]
        self._next += 1
        return row

    def close(self) -> None:
        """Wait for a block being drawn ahead, so that nothing uses the generator or the buffers
        after this returns. A block drawn in full is kept for the next :meth:`next_row` after
        the current one, so a seeded generator's stream is the same with or without pauses;
        one that failed is dropped, and its error with it. Idempotent."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._ready = pending.exception() is None  # waits

    def _advance(self) -> None:
        if not self.ahead:
            self._fill(self._blocks[0])
        else:
            if self._pending is not None:
                pending, self._pending = self._pending, None
                pending.result()  # waits for the helper; re-raises its failure here
                self._current ^= 1
            elif self._ready:  # drawn ahead before a close()
                self._ready = False
                self._current ^= 1
            else:  # the first block: drawn here, the next one behind it
                self._fill(self._blocks[self._current])
            self._draw_ahead()
        self._rows = list(self._blocks[self._current].unbind(0))
        self._next = 0

    def _draw_ahead(self) -> None:
        """Draw the block after the current one on the helper thread."""
        self._pending = _drawing_thread().submit(self._fill, self._blocks[self._current ^ 1])

    def _fill(self, block: torch.Tensor) -> None:
        if self.std == 0.0:  # Opacus returns zeros and draws nothing
            block.zero_()
        elif not self.secure_mode:  # Opacus's plain path: one draw in the buffer's dtype
            block.normal_(0.0, self.std, generator=self.generator).div_(self.divisor)
        else:
            std, generator = self.std, self.generator
            # The throw-away first sample, exactly as Opacus draws it.
            torch.normal(mean=0, std=std, size=(1, 1), device=self._device, generator=generator)
            if self._draw is None:
                block.normal_(0.0, std, generator=generator)
            else:
                block.copy_(self._draw.normal_(0.0, std, generator=generator))
            for _ in range(3):
                block.add_(self._spare.normal_(0.0, std, generator=generator))
            block.div_(2.0 * self.divisor)

"""Progress lines on stderr for commands that run for more than a few seconds.

stdout stays for results (tables, ``--json``); these lines say what is running and for how
long, so a minute-long command is never silent. They carry phase names, counts and aggregate
metrics only: never a record, an id or a field value.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Timestamped phase lines: ``[  12.3s] training the DP model (2/3) ...``."""

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"[{time.monotonic() - self.started:7.1f}s] {text}", file=stream, flush=True)

    @contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """``text ...`` now, ``text: done in N s`` after."""
        t0 = time.monotonic()
        self(f"{text} ...")
        yield
        self(f"{text}: done in {time.monotonic() - t0:.1f} s")

    def count(self, side: str, step: str, done: int, total: int | None) -> None:
        """A progress bar line for a long counted step: ``a: blinding 1,200,000/10,000,000 [##--------] 12%``."""
        if total:
            filled = min(20, 20 * done // total)
            self(
                f"{side}: {step} {done:,}/{total:,} [{'#' * filled}{'-' * (20 - filled)}] {min(100, 100 * done // total)}%"
            )
        else:
            self(f"{side}: {step} {done:,}")

    @contextmanager
    def from_loggers(self, *names: str) -> Iterator[None]:
        """Show the INFO lines of these library loggers (e.g. one per round) as progress lines, once each.

        Their records stop at these loggers meanwhile: a handler that an imported library put on
        the root logger (opacus calls ``logging.basicConfig`` on import) would print each line a
        second time, in its own format, now that these loggers pass INFO.
        """
        handler = _Forward(self)
        saved = []
        for name in names:
            logger = logging.getLogger(name)
            saved.append((logger, logger.level, logger.propagate))
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            logger.propagate = False
        try:
            yield
        finally:
            for logger, level, propagate in saved:
                logger.removeHandler(handler)
                logger.setLevel(level)
                logger.propagate = propagate


class _Forward(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress(record.getMessage())
        except Exception:
            self.handleError(record)

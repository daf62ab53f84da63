"""The Rich consoles every command prints through.

Emoji codes are off: Rich would print a service named ``node:bank:analytics`` as
``node🏦analytics``, and a compliance officer must read names exactly as they are registered.
Lines are not cut to the console's width (``soft_wrap``): a path or key id in a message stays
whole, for the terminal to wrap and for a user to copy. Tables still fit the width.
"""

from __future__ import annotations

from rich.console import Console


def terminal(*, stderr: bool = False) -> Console:
    """A console on stdout (results) or stderr (notices, errors), printing text as given."""
    return Console(stderr=stderr, emoji=False, soft_wrap=True)

"""The root of every error hwnas raises on purpose.

Each package's errors (a bad block key, an unknown space, a device that is gone, a predictor file of
another version, a search that cannot start) derive from `HwnasError` as well as from the built-in
type they always had (ValueError, RuntimeError, KeyError), so callers that caught those still do.
The command line catches `HwnasError` and prints its message as one line; anything else is a bug and
keeps its traceback. It lives at the bottom layer, beside the profiler, because everything imports it.
"""

from __future__ import annotations

__all__ = ["HwnasError"]


class HwnasError(Exception):
    """An error with a message meant for the user: what was wrong, and what to do about it."""

"""User-facing errors: one paragraph naming the file/option and the fix, never a deep trace."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable


class FodlError(RuntimeError):
    """A problem with the user's input (data, config, checkpoint) that has a known fix.

    The entry points catch it and print only the message, so the message must say
    what is wrong, which file or option, and what to do about it.
    """


def user_error(e: BaseException) -> FodlError | None:
    """The :class:`FodlError` that ``e`` is or carries, else None. Hydra's ``instantiate``
    wraps whatever a constructor raises in an ``InstantiationException`` (the FodlError is
    its ``__cause__``, a level per nested ``_target_``): the entry points unwrap it here, so
    the user sees the FodlError's own paragraph, not Hydra's traceback around it."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e if isinstance(e, FodlError) else None


def reports_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a script's ``main``: a :class:`FodlError` (also one raised inside Hydra's
    ``instantiate``: :func:`user_error`) ends it with its message as one ``error: ...``
    paragraph on stderr and exit status 2 (bad input: the message says the fix), never a
    traceback. Other exit statuses stay the script's own (1: it ran, the result failed)."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs) or 0
        except Exception as e:
            error = user_error(e)
            if error is None:
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run

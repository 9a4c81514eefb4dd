"""User-facing errors: one paragraph naming the file/option and the fix, never a deep trace."""


class FodlError(RuntimeError):
    """A problem with the user's input (data, config, checkpoint) that has a known fix.

    The entry points catch it and print only the message, so the message must say
    what is wrong, which file or option, and what to do about it.
    """

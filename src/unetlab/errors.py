"""User-facing errors: one clear line naming the file or option and the problem."""
from __future__ import annotations


class UnetlabError(ValueError):
    """Bad input from the user (a file, an option, a value).

    The message must name the file or option and say what is wrong, in one line. The CLI prints
    it as ``unetlab: error: <message>`` and exits with code 2 (``--debug`` shows the traceback).
    It is a ``ValueError`` so that library users can catch it as one.
    """

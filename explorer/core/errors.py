"""One error hierarchy for everything the user can get wrong.

Pages catch only :class:`ExplorerError` and show it with ``st.error``; the CLI turns it into
one line on stderr and exit code 2.  Anything else is a bug (exit code 1).
"""
from __future__ import annotations


class ExplorerError(Exception):
    """Base class of every error caused by the user's input or options.

    The message is a single line that names the file, tensor or field and says what is wrong.
    """


class InputError(ExplorerError):
    """A source, file or tensor cannot be used (missing, corrupt, wrong shape, NaN...)."""


class OptionError(ExplorerError):
    """An option has a value outside its allowed range."""
